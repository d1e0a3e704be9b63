"""Retraining the heads and managing model versions.

pipeline   data -> cached features -> heads -> evaluation by person -> registered version (`faceverify train`)
fitting    pure training and evaluation functions on arrays, split by person
augment    training-time views of an aligned face
embedding_cache  pretrained features per photo hash and recipe, kept in the database
worker     a training run in a background process, with progress and cancel
registry   which versions exist and which is active; promote, rollback, discard

May import: core.verification, core.storage."""
