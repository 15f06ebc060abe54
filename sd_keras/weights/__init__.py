"""Weight loading: KerasCV h5 files and models (``keras_cv``), checkpoints, LoRA, verified downloads."""
