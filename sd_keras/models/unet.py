"""The conditional UNet ("diffusion model") of SD 1.x / 2.x, KerasCV's ``DiffusionModel`` / ``DiffusionModelV2``,
and of SDXL (an ``sd_keras.config_sdxl.SDXLUNetConfig``: transformer blocks per level, added conditioning).

Layer names: ``time_embedding_1/2``, ``conv_in``, ``down_{level}_res_{i}``, ``down_{level}_attn_{i}``,
``down_{level}_downsample``, ``mid_res_0``, ``mid_attn``, ``mid_res_1``, ``up_{u}_res_{i}``, ``up_{u}_attn_{i}``,
``up_{u}_upsample``, ``norm_out``, ``conv_out``. ``up_{u}`` is diffusers' ``up_blocks[u]`` (u=0 is the deepest).
SDXL adds ``add_time_proj`` (the time ids' sinusoids) and ``add_embedding_1/2``.
"""

import functools
from typing import NamedTuple

import keras

from sd_keras.config import UNetConfig, get_config
from sd_keras.models.layers import (GroupNormalization, ResnetBlock, SpatialTransformer, TimeIdsEmbedding, conv2d,
                                    dense)


class UNetBlock(NamedTuple):
    """One block of a built UNet, in call order: ``kind`` (``stem``, ``down``, ``downsample``, ``mid``, ``up``,
    ``upsample``, ``head``), its ``name`` and the names of its layers in the order it calls them.

    ``build_diffusion_model`` records the blocks it builds as ``model.sd_keras_layout`` (``unet_layout``), so that
    code running the UNet block by block (the LiteRT exporter's parts) follows the builder instead of describing
    the UNet a second time.
    """

    kind: str
    name: str
    layers: tuple


def unet_layout(model):
    """The ``UNetBlock`` sequence ``build_diffusion_model`` recorded for ``model`` (ValueError for other models)."""
    layout = getattr(model, "sd_keras_layout", None)
    if layout is None:
        raise ValueError(f"{model.name}: not a UNet built by sd_keras.models.build_diffusion_model (no block layout)")
    return layout


def build_diffusion_model(config, *, dtype=None, name="diffusion_model"):
    """``{"latent": (B,h,w,in), "timestep_embedding": (B,timestep_dim), "context": (B,L,D)} -> (B,h,w,out)``.

    h and w may be any multiple of ``2 ** (levels - 1)`` (any image size that is a multiple of 64 for SD).
    ``config``: a ``ModelConfig``, a ``UNetConfig`` or a preset name; ``dtype``: a Keras dtype policy.
    An SDXL UNet (``SDXLUNetConfig``) takes two more inputs: ``"text_embeds"`` (B, pooled_dim), the pooled text
    embedding, and ``"time_ids"`` (B, num_time_ids) float32, the micro-conditioning values.

    Example:
        >>> unet = build_diffusion_model("tiny")
        >>> [tuple(t.shape) for t in unet.inputs]  # doctest: +SKIP
    """
    cfg = config if isinstance(config, UNetConfig) else get_config(config).unet
    latent = keras.Input((None, None, cfg.in_channels), name="latent")
    t_input = keras.Input((cfg.timestep_dim,), name="timestep_embedding")
    context = keras.Input((None, cfg.context_dim), name="context")
    inputs = {"latent": latent, "timestep_embedding": t_input, "context": context}
    added = hasattr(cfg, "num_time_ids")  # SDXL
    depths = cfg.transformer_depth if added else (1,) * len(cfg.block_out_channels)

    def res_block(channels, layer_name):
        return ResnetBlock(channels, cfg.norm_groups, cfg.norm_eps, use_time_embedding=True, dtype=dtype,
                           name=layer_name)

    def transformer(channels, layer_name, depth):
        num_heads, head_size = cfg.attention_heads(channels)
        return SpatialTransformer(num_heads, head_size, cfg.linear_proj, cfg.ff_mult, cfg.gelu_approximate,
                                  cfg.norm_groups, cfg.transformer_norm_eps, depth=depth, dtype=dtype,
                                  name=layer_name)

    def conv(channels, layer_name, **kwargs):
        return conv2d(channels, 3, padding="same", dtype=dtype, name=layer_name, **kwargs)

    layout = []
    t_emb = dense(cfg.time_embed_dim, dtype=dtype, name="time_embedding_1")(t_input)
    t_emb = keras.layers.Activation("silu", dtype=dtype, name="time_embedding_act")(t_emb)
    t_emb = dense(cfg.time_embed_dim, dtype=dtype, name="time_embedding_2")(t_emb)
    if added:  # diffusers' addition_embed_type="text_time": [pooled text, sinusoids of the time ids]
        inputs["text_embeds"] = keras.Input((cfg.pooled_dim,), name="text_embeds")
        inputs["time_ids"] = keras.Input((cfg.num_time_ids,), name="time_ids")
        time_ids = TimeIdsEmbedding(cfg.addition_time_embed_dim, name="add_time_proj")(inputs["time_ids"])
        a_emb = keras.layers.Concatenate(dtype=dtype, name="add_concat")([inputs["text_embeds"], time_ids])
        a_emb = dense(cfg.time_embed_dim, dtype=dtype, name="add_embedding_1")(a_emb)
        a_emb = keras.layers.Activation("silu", dtype=dtype, name="add_embedding_act")(a_emb)
        a_emb = dense(cfg.time_embed_dim, dtype=dtype, name="add_embedding_2")(a_emb)
        t_emb = keras.layers.Add(dtype=dtype, name="add_embedding_sum")([t_emb, a_emb])

    channels = cfg.block_out_channels
    last = len(channels) - 1
    x = conv(channels[0], "conv_in")(latent)
    layout.append(UNetBlock("stem", "stem", ("time_embedding_1", "time_embedding_act", "time_embedding_2") + (
        ("add_time_proj", "add_concat", "add_embedding_1", "add_embedding_act", "add_embedding_2",
         "add_embedding_sum") if added else ()) + ("conv_in",)))
    skips = [x]
    for level, width in enumerate(channels):
        for i in range(cfg.layers_per_block):
            block = [f"down_{level}_res_{i}"]
            x = res_block(width, block[-1])(x, t_emb)
            if cfg.attention_levels[level]:
                block.append(f"down_{level}_attn_{i}")
                x = transformer(width, block[-1], depths[level])(x, context)
            skips.append(x)
            layout.append(UNetBlock("down", block[0], tuple(block)))
        if level < last:
            x = keras.layers.ZeroPadding2D(1, dtype=dtype, name=f"down_{level}_downsample_pad")(x)
            x = conv2d(width, 3, strides=2, dtype=dtype, name=f"down_{level}_downsample")(x)
            skips.append(x)
            layout.append(UNetBlock("downsample", f"down_{level}_downsample",
                                    (f"down_{level}_downsample_pad", f"down_{level}_downsample")))

    x = res_block(channels[-1], "mid_res_0")(x, t_emb)
    x = transformer(channels[-1], "mid_attn", depths[-1])(x, context)
    x = res_block(channels[-1], "mid_res_1")(x, t_emb)
    layout.append(UNetBlock("mid", "mid", ("mid_res_0", "mid_attn", "mid_res_1")))

    for up, level in enumerate(reversed(range(len(channels)))):
        width = channels[level]
        for i in range(cfg.layers_per_block + 1):
            block = [f"up_{up}_concat_{i}", f"up_{up}_res_{i}"]
            x = keras.layers.Concatenate(dtype=dtype, name=block[0])([x, skips.pop()])
            x = res_block(width, block[1])(x, t_emb)
            if cfg.attention_levels[level]:
                block.append(f"up_{up}_attn_{i}")
                x = transformer(width, block[-1], depths[level])(x, context)
            layout.append(UNetBlock("up", block[1], tuple(block)))
        if level > 0:
            x = keras.layers.UpSampling2D(2, dtype=dtype, name=f"up_{up}_upsample_nearest")(x)
            x = conv(width, f"up_{up}_upsample")(x)
            layout.append(UNetBlock("upsample", f"up_{up}_upsample", (f"up_{up}_upsample_nearest",
                                                                       f"up_{up}_upsample")))

    x = GroupNormalization(cfg.norm_groups, epsilon=cfg.norm_eps, dtype=dtype, name="norm_out")(x)
    x = keras.layers.Activation("silu", dtype=dtype, name="act_out")(x)
    output = conv(cfg.out_channels, "conv_out")(x)
    layout.append(UNetBlock("head", "head", ("norm_out", "act_out", "conv_out")))
    model = keras.Model(inputs, output, name=name)
    model.sd_keras_builder = functools.partial(build_diffusion_model, cfg, name=name)
    object.__setattr__(model, "sd_keras_layout", tuple(layout))  # plain attribute: not tracked by Keras
    return model
