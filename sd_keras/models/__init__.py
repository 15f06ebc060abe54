"""Keras 3 models of Stable Diffusion, built from ``sd_keras.config`` with KerasCV's call signatures.

Example:
    >>> from sd_keras import models
    >>> unet = models.build_diffusion_model("tiny")
"""

from sd_keras.models.layers import timestep_embedding
from sd_keras.models.text_encoder import build_text_encoder
from sd_keras.models.unet import build_diffusion_model
from sd_keras.models.vae import build_decoder, build_image_encoder

__all__ = ["build_text_encoder", "build_diffusion_model", "build_decoder", "build_image_encoder",
           "timestep_embedding"]
