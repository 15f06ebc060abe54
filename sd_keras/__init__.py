"""sd_keras: Keras 3 Stable Diffusion with XLA-compiled sampling, LiteRT export and serving.

Example:
    >>> import sd_keras
    >>> sd = sd_keras.StableDiffusion.from_preset("tiny")
    >>> sd.text_to_image("a red circle", num_steps=2, seed=0, height=64, width=64).shape
    (1, 64, 64, 3)
    >>> sd_keras.load("tiny").config.name       # a preset, checkpoint path or exported bundle folder
    'tiny'
"""

from sd_keras.version import __version__
__all__ = ["StableDiffusion", "StableDiffusionV2", "StableDiffusionXL", "image_grid", "load", "presets",
           "__version__"]


def __getattr__(name):
    # Lazy: `sd-keras info` and the tokenizer work without importing Keras and a backend.
    if name in ("StableDiffusion", "StableDiffusionV2"):
        from sd_keras import pipeline

        return getattr(pipeline, name)
    if name == "StableDiffusionXL":
        from sd_keras.pipeline_sdxl import StableDiffusionXL

        return StableDiffusionXL
    if name == "load":
        from sd_keras.loading import load

        return load
    if name == "image_grid":
        from sd_keras.images import image_grid

        return image_grid
    if name == "presets":
        import importlib

        return importlib.import_module("sd_keras.presets")
    raise AttributeError(f"module 'sd_keras' has no attribute {name!r}")
