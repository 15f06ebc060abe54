"""Keras 3 models of Stable Diffusion, built from ``sd_keras.config`` with KerasCV's call signatures.

``COMPONENTS`` is the registry of the SD 1.x / 2.x family (component name → ``Component``: builder, the config
part it takes, whether it runs under the compute dtype, whether a model may lack it); ``build(component, config,
dtype)`` builds one of them and ``build_all(config, weights, dtype=...)`` a whole model from what a loader
returned. Another family registers its own components in ``registry`` (see its docstring for how); SDXL's are
in ``sd_keras.models.sdxl``.

Example:
    >>> from sd_keras import models
    >>> unet = models.build("diffusion_model", "tiny")
    >>> models.COMPONENTS["decoder"].config_field
    'vae'
"""

from sd_keras.config import ModelConfig
from sd_keras.models import registry
from sd_keras.models.layers import timestep_embedding
from sd_keras.models.registry import (Component, Weights, assign, build, build_all, built_with, components,
                                      rebuild, tensors, variable_key, variables)
from sd_keras.models.text_encoder import build_text_encoder
from sd_keras.models.unet import build_diffusion_model
from sd_keras.models.vae import build_decoder, build_image_encoder

COMPONENTS = registry.register_family("sd", ModelConfig, [
    Component("text_encoder", build_text_encoder, "text_encoder"),
    Component("diffusion_model", build_diffusion_model, "unet"),
    Component("decoder", build_decoder, "vae", compute_dtype=False),
    Component("image_encoder", build_image_encoder, "vae", compute_dtype=False, optional=True),
]).components

from sd_keras.models import sdxl  # noqa: E402  registers the SDXL families ("sdxl", "sdxl-refiner")

__all__ = ["COMPONENTS", "Component", "Weights", "build", "build_all", "rebuild", "built_with", "components",
           "variable_key", "variables", "tensors", "assign", "registry", "build_text_encoder",
           "build_diffusion_model", "build_decoder", "build_image_encoder", "timestep_embedding"]
