"""SDXL in Keras 3: the two text encoders (penultimate hidden states; the second also pooled and projected), the
UNet with added conditioning, the VAE; registered as the ``sdxl`` and ``sdxl-refiner`` families of
``sd_keras.models.registry``. Built from ``sd_keras.config_sdxl`` with the SD 1.x / 2.x layer code.

Components (``models.build(name, config)``; inputs and outputs):

- ``text_encoder`` (base only; CLIP ViT-L): ``{"tokens", "positions"}`` (B, 77) int32 → (B, 77, 768), the
  penultimate layer's hidden states (no final LayerNorm);
- ``text_encoder_2`` (OpenCLIP ViT-bigG): same inputs → ``{"hidden_states": (B, 77, 1280), "pooled": (B, 1280)}``;
- ``diffusion_model``: ``{"latent", "timestep_embedding", "context", "text_embeds", "time_ids"}`` → (B, h, w, 4);
  ``context`` is the encoders' hidden states concatenated on the last axis (base: CLIP-L first);
- ``decoder`` / ``image_encoder``: SD's VAE with ``scaling_factor`` 0.13025 (decoded in float32 by default:
  the stock SDXL VAE overflows in float16).

Layer names of the text encoders follow ``build_text_encoder`` (``embeddings``, ``encoder_layer_{i}``,
``final_layer_norm``) plus ``text_projection``.

Example:
    >>> from sd_keras import models
    >>> from sd_keras.models.sdxl import tiny_sdxl_config
    >>> encoder = models.build("text_encoder_2", tiny_sdxl_config())
    >>> sorted(encoder.output)
    ['hidden_states', 'pooled']
"""

import dataclasses
import functools

import keras
from keras import ops

from sd_keras.config import VAEConfig
from sd_keras.config_sdxl import (SDXLConfig, SDXLRefinerConfig, SDXLTextEncoderConfig, SDXLUNetConfig,
                                  get_sdxl_config)
from sd_keras.errors import InputError
from sd_keras.models import registry
from sd_keras.models.layers import CLIPEmbedding, CLIPEncoderLayer, LayerNormalization, _serializable, dense
from sd_keras.models.unet import build_diffusion_model
from sd_keras.models.vae import build_decoder, build_image_encoder


@_serializable
class PoolAtEndToken(keras.layers.Layer):
    """The hidden state at the first position of each prompt's highest token id: the end-of-text token (the
    CLIP vocabulary's last id), as OpenCLIP pools (``argmax`` over the ids) and transformers' CLIP does for
    SDXL's configs. ``layer(hidden (B, L, D), tokens (B, L))`` → (B, D); a one-hot sum, no gather."""

    def call(self, hidden, tokens):
        tokens = ops.cast(tokens, "int32")
        is_max = ops.cast(ops.equal(tokens, ops.max(tokens, axis=-1, keepdims=True)), "int32")
        first = ops.logical_and(ops.equal(ops.cumsum(is_max, axis=-1), 1), ops.equal(is_max, 1))
        weights = ops.cast(first, hidden.dtype)
        return ops.sum(hidden * weights[..., None], axis=1)

    def compute_output_shape(self, hidden_shape, tokens_shape):
        return (hidden_shape[0], hidden_shape[-1])


def build_sdxl_text_encoder(config, *, dtype=None, name="text_encoder"):
    """A CLIP text encoder as SDXL uses it (``config``: an ``SDXLTextEncoderConfig``).

    Without ``projection_dim``: (B, L, width), the penultimate layer's output (the last layer is not built).
    With it: ``{"hidden_states": penultimate (B, L, width), "pooled": (B, projection_dim)}``, the pooled output
    being the final LayerNorm's output at the end token times ``text_projection`` (no bias).
    """
    if not isinstance(config, SDXLTextEncoderConfig):
        raise InputError(f"{name}: needs an SDXLTextEncoderConfig, got {type(config).__name__}")
    cfg = config
    tokens = keras.Input((cfg.max_length,), dtype="int32", name="tokens")
    positions = keras.Input((cfg.max_length,), dtype="int32", name="positions")
    x = CLIPEmbedding(cfg.vocab_size, cfg.width, cfg.max_length, dtype=dtype, name="embeddings")(tokens, positions)
    penultimate = None
    for index in range(cfg.built_layers):
        if index == cfg.num_layers - 1:
            penultimate = x
        x = CLIPEncoderLayer(cfg.width, cfg.num_heads, cfg.intermediate_size, cfg.activation, cfg.layer_norm_eps,
                             dtype=dtype, name=f"encoder_layer_{index}")(x)
    if cfg.projection_dim:
        x = LayerNormalization(epsilon=cfg.layer_norm_eps, dtype=dtype, name="final_layer_norm")(x)
        pooled = PoolAtEndToken(dtype=dtype, name="pool")(x, tokens)
        pooled = dense(cfg.projection_dim, use_bias=False, dtype=dtype, name="text_projection")(pooled)
        outputs = {"hidden_states": penultimate, "pooled": pooled}
    else:
        outputs = x
    model = keras.Model({"tokens": tokens, "positions": positions}, outputs, name=name)
    model.sd_keras_builder = functools.partial(build_sdxl_text_encoder, cfg, name=name)
    return model


def build_sdxl_unet(config, *, dtype=None, name="diffusion_model"):
    """The SDXL UNet (``config``: an ``SDXLUNetConfig``); see ``build_diffusion_model`` for its inputs."""
    if not isinstance(config, SDXLUNetConfig):
        raise InputError(f"{name}: needs an SDXLUNetConfig, got {type(config).__name__}")
    return build_diffusion_model(config, dtype=dtype, name=name)


def _family(text_encoder):
    return [
        *([registry.Component("text_encoder", build_sdxl_text_encoder, "text_encoder")] if text_encoder else []),
        registry.Component("text_encoder_2", build_sdxl_text_encoder, "text_encoder_2"),
        registry.Component("diffusion_model", build_sdxl_unet, "unet"),
        registry.Component("decoder", build_decoder, "vae", compute_dtype=False),
        registry.Component("image_encoder", build_image_encoder, "vae", compute_dtype=False, optional=True),
    ]


# the refiner's class derives from the base's: registered first, so that family_of finds it first
REFINER_COMPONENTS = registry.register_family("sdxl-refiner", SDXLRefinerConfig, _family(False)).components
COMPONENTS = registry.register_family("sdxl", SDXLConfig, _family(True)).components


def encode_prompt_embeddings(encoders, tokens, positions):
    """``(context, pooled)`` from built text encoders (``[text_encoder, text_encoder_2]`` or the refiner's
    ``[text_encoder_2]``) and token ids per encoder: the hidden states concatenated, the last one's pooled."""
    hidden = []
    pooled = None
    for encoder, ids in zip(encoders, tokens):
        out = encoder({"tokens": ids, "positions": positions})
        if isinstance(out, dict):
            hidden.append(out["hidden_states"])
            pooled = out["pooled"]
        else:
            hidden.append(out)
    return ops.concatenate(hidden, axis=-1), pooled


def tiny_sdxl_config(*, refiner=False, inpainting=False):
    """A small SDXL-shaped ``SDXLConfig`` with random-weight sizes for tests and smoke runs: two encoders of
    different widths (64 and 128, projection 96), transformer depth per level (1, 2, 3), 3 heads at the last
    level, 8-wide time-id sinusoids; ``refiner``: one encoder, 5 time ids; ``inpainting``: a 9-channel UNet."""
    base = get_sdxl_config("sd-xl")
    clip = SDXLTextEncoderConfig(vocab_size=1000, width=64, num_layers=3, num_heads=1, intermediate_size=128,
                                 activation="quick_gelu")
    big = SDXLTextEncoderConfig(vocab_size=1000, width=128, num_layers=3, num_heads=2, intermediate_size=256,
                                activation="gelu", projection_dim=96)
    vae = VAEConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=1, scaling_factor=0.13025, norm_eps=1e-6)
    unet = dict(layers_per_block=1, num_heads=None, head_size=64, linear_proj=True, gelu_approximate=False,
                transformer_norm_eps=1e-6, addition_time_embed_dim=8, pooled_dim=96)
    if refiner:
        unet = SDXLUNetConfig(block_out_channels=(64, 64, 128, 128), attention_levels=(False, True, True, False),
                              context_dim=128, timestep_dim=64, time_embed_dim=256, transformer_depth=(2, 2, 2, 2),
                              num_time_ids=5, **unet)
        return SDXLRefinerConfig(name="tiny-xl-refiner", text_encoder=None, text_encoder_2=big, unet=unet, vae=vae,
                                 image_size=(64, 64), pad_token_ids=(0,), force_zeros_for_empty_prompt=False,
                                 family="sdxl-refiner")
    unet = SDXLUNetConfig(in_channels=9 if inpainting else 4, block_out_channels=(64, 64, 192),
                          attention_levels=(False, True, True), context_dim=192, timestep_dim=64, time_embed_dim=256,
                          transformer_depth=(1, 2, 3), num_time_ids=6, **unet)
    return dataclasses.replace(base, name="tiny-xl-inpainting" if inpainting else "tiny-xl", text_encoder=clip,
                               text_encoder_2=big, unet=unet, vae=vae, image_size=(64, 64))


__all__ = ["COMPONENTS", "REFINER_COMPONENTS", "PoolAtEndToken", "build_sdxl_text_encoder", "build_sdxl_unet",
           "encode_prompt_embeddings", "tiny_sdxl_config"]
