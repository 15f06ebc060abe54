"""The sd_keras version (``sd_keras.__version__``), in a foundation module so that any layer may read it."""

__version__ = "0.1.0"
