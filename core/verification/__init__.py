"""The verification path: photo bytes -> decoded image -> faces -> aligned chips -> pretrained networks
-> trained heads -> rules -> VerificationResult. Pure computation: no database, no Streamlit.

imaging     decode and check photo bytes (EXIF rotation, RGB, size and pixel limits)
quality     sharpness-and-contrast score of an aligned face crop (the low-quality flag)
faces       detection (MediaPipe), main face, 5 landmarks and alignment
networks/   the pretrained networks, one module each (identity embeddings, gender)
features    photo -> located face -> pretrained features (shared by the engine and training)
heads       the trainable Keras heads and their saved versions
capture     capture quality of the main face (mask, hand, sunglasses, eyes, blur, light, size, pose)
fraud       reused or stale photos, head pose for challenges (pure functions)
policy      the decision policy: approve / review / reject from the calibrated similarity
calibration calibration error and reliability plot
engine      Engine.verify(): the one path every caller uses
result      result objects and flag codes
genders     one normalisation of gender values

May import: core.config, core.errors, and nothing else of core."""
