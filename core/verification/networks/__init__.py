"""The pretrained networks the verification path runs, one module each (dlib_resnet: identity
embeddings; gender_cydral: gender log-odds). They are ported to Keras and read their weights from
files shipped in packages or in models/pretrained/; nothing is downloaded."""
