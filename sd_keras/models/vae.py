"""The KL-autoencoder: KerasCV's ``Decoder`` and ``ImageEncoder`` (VAE encoder) from one ``VAEConfig``.

Layer names: ``conv_in``, ``down_{level}_res_{i}``, ``down_{level}_downsample``, ``mid_res_0``, ``mid_attn``,
``mid_res_1``, ``up_{u}_res_{i}``, ``up_{u}_upsample``, ``norm_out``, ``conv_out``, plus ``quant_conv`` (encoder)
and ``post_quant_conv`` (decoder); ``up_{u}`` is diffusers' ``decoder.up_blocks[u]``.
"""

import functools

import keras

from sd_keras.config import VAEConfig, get_config
from sd_keras.models.layers import AttentionBlock, GroupNormalization, LatentMean, ResnetBlock, conv2d


def _vae_config(config):
    return config if isinstance(config, VAEConfig) else get_config(config).vae


def _mid_block(x, cfg, dtype):
    width = cfg.block_out_channels[-1]
    x = ResnetBlock(width, cfg.norm_groups, cfg.norm_eps, dtype=dtype, name="mid_res_0")(x)
    x = AttentionBlock(width, cfg.norm_groups, cfg.norm_eps, dtype=dtype, name="mid_attn")(x)
    return ResnetBlock(width, cfg.norm_groups, cfg.norm_eps, dtype=dtype, name="mid_res_1")(x)


def _conv_out(x, cfg, channels, dtype):
    x = GroupNormalization(cfg.norm_groups, epsilon=cfg.norm_eps, dtype=dtype, name="norm_out")(x)
    x = keras.layers.Activation("silu", dtype=dtype, name="act_out")(x)
    return conv2d(channels, 3, padding="same", dtype=dtype, name="conv_out")(x)


def build_decoder(config, *, dtype=None, name="decoder"):
    """``latent (B,h,w,latent_channels) -> image (B,f*h,f*w,3)`` in about [-1, 1], f = downsample factor (8).

    Divides the latent by ``scaling_factor`` first, as KerasCV's Decoder does.

    Example:
        >>> import numpy as np
        >>> tuple(build_decoder("tiny")(np.zeros((1, 8, 8, 4), "float32")).shape)
        (1, 64, 64, 3)
    """
    cfg = _vae_config(config)
    latent = keras.Input((None, None, cfg.latent_channels), name="latent")
    x = keras.layers.Rescaling(1.0 / cfg.scaling_factor, dtype=dtype, name="rescale")(latent)
    x = conv2d(cfg.latent_channels, 1, dtype=dtype, name="post_quant_conv")(x)
    channels = tuple(reversed(cfg.block_out_channels))
    x = conv2d(channels[0], 3, padding="same", dtype=dtype, name="conv_in")(x)
    x = _mid_block(x, cfg, dtype)
    for up, width in enumerate(channels):
        for i in range(cfg.layers_per_block + 1):
            x = ResnetBlock(width, cfg.norm_groups, cfg.norm_eps, dtype=dtype, name=f"up_{up}_res_{i}")(x)
        if up < len(channels) - 1:
            x = keras.layers.UpSampling2D(2, dtype=dtype, name=f"up_{up}_upsample_nearest")(x)
            x = conv2d(width, 3, padding="same", dtype=dtype, name=f"up_{up}_upsample")(x)
    image = _conv_out(x, cfg, cfg.image_channels, dtype)
    model = keras.Model(latent, image, name=name)
    model.sd_keras_builder = functools.partial(build_decoder, cfg, name=name)
    return model


def build_image_encoder(config, *, dtype=None, name="image_encoder"):
    """``image (B,H,W,3) in [-1, 1] -> latent (B,H/f,W/f,latent_channels)``: the posterior mean times
    ``scaling_factor``, exactly KerasCV's ImageEncoder (no sampling).

    Example:
        >>> import numpy as np
        >>> tuple(build_image_encoder("tiny")(np.zeros((1, 64, 64, 3), "float32")).shape)
        (1, 8, 8, 4)
    """
    cfg = _vae_config(config)
    image = keras.Input((None, None, cfg.image_channels), name="image")
    channels = cfg.block_out_channels
    x = conv2d(channels[0], 3, padding="same", dtype=dtype, name="conv_in")(image)
    for level, width in enumerate(channels):
        for i in range(cfg.layers_per_block):
            x = ResnetBlock(width, cfg.norm_groups, cfg.norm_eps, dtype=dtype, name=f"down_{level}_res_{i}")(x)
        if level < len(channels) - 1:
            # KerasCV (like the original VAE) pads only bottom/right before the stride-2 conv.
            x = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), dtype=dtype, name=f"down_{level}_downsample_pad")(x)
            x = conv2d(width, 3, strides=2, dtype=dtype, name=f"down_{level}_downsample")(x)
    x = _mid_block(x, cfg, dtype)
    moments = _conv_out(x, cfg, 2 * cfg.latent_channels, dtype)
    moments = conv2d(2 * cfg.latent_channels, 1, dtype=dtype, name="quant_conv")(moments)
    latent = LatentMean(cfg.latent_channels, cfg.scaling_factor, dtype=dtype, name="latent_mean")(moments)
    model = keras.Model(image, latent, name=name)
    model.sd_keras_builder = functools.partial(build_image_encoder, cfg, name=name)
    return model
