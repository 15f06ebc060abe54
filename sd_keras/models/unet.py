"""The conditional UNet ("diffusion model") of SD 1.x / 2.x, KerasCV's ``DiffusionModel`` / ``DiffusionModelV2``.

Layer names: ``time_embedding_1/2``, ``conv_in``, ``down_{level}_res_{i}``, ``down_{level}_attn_{i}``,
``down_{level}_downsample``, ``mid_res_0``, ``mid_attn``, ``mid_res_1``, ``up_{u}_res_{i}``, ``up_{u}_attn_{i}``,
``up_{u}_upsample``, ``norm_out``, ``conv_out``. ``up_{u}`` is diffusers' ``up_blocks[u]`` (u=0 is the deepest).
"""

import functools

import keras

from sd_keras.config import UNetConfig, get_config
from sd_keras.models.layers import GroupNormalization, ResnetBlock, SpatialTransformer, conv2d, dense


def build_diffusion_model(config, *, dtype=None, name="diffusion_model"):
    """``{"latent": (B,h,w,in), "timestep_embedding": (B,timestep_dim), "context": (B,L,D)} -> (B,h,w,out)``.

    h and w may be any multiple of ``2 ** (levels - 1)`` (any image size that is a multiple of 64 for SD).
    ``config``: a ``ModelConfig``, a ``UNetConfig`` or a preset name; ``dtype``: a Keras dtype policy.

    Example:
        >>> unet = build_diffusion_model("tiny")
        >>> [tuple(t.shape) for t in unet.inputs]  # doctest: +SKIP
    """
    cfg = config if isinstance(config, UNetConfig) else get_config(config).unet
    latent = keras.Input((None, None, cfg.in_channels), name="latent")
    t_input = keras.Input((cfg.timestep_dim,), name="timestep_embedding")
    context = keras.Input((None, cfg.context_dim), name="context")

    def res_block(channels, layer_name):
        return ResnetBlock(channels, cfg.norm_groups, cfg.norm_eps, use_time_embedding=True, dtype=dtype,
                           name=layer_name)

    def transformer(channels, layer_name):
        num_heads, head_size = cfg.attention_heads(channels)
        return SpatialTransformer(num_heads, head_size, cfg.linear_proj, cfg.ff_mult, cfg.gelu_approximate,
                                  cfg.norm_groups, cfg.transformer_norm_eps, dtype=dtype, name=layer_name)

    def conv(channels, layer_name, **kwargs):
        return conv2d(channels, 3, padding="same", dtype=dtype, name=layer_name, **kwargs)

    t_emb = dense(cfg.time_embed_dim, dtype=dtype, name="time_embedding_1")(t_input)
    t_emb = keras.layers.Activation("silu", dtype=dtype, name="time_embedding_act")(t_emb)
    t_emb = dense(cfg.time_embed_dim, dtype=dtype, name="time_embedding_2")(t_emb)

    channels = cfg.block_out_channels
    last = len(channels) - 1
    x = conv(channels[0], "conv_in")(latent)
    skips = [x]
    for level, width in enumerate(channels):
        for i in range(cfg.layers_per_block):
            x = res_block(width, f"down_{level}_res_{i}")(x, t_emb)
            if cfg.attention_levels[level]:
                x = transformer(width, f"down_{level}_attn_{i}")(x, context)
            skips.append(x)
        if level < last:
            x = keras.layers.ZeroPadding2D(1, dtype=dtype, name=f"down_{level}_downsample_pad")(x)
            x = conv2d(width, 3, strides=2, dtype=dtype, name=f"down_{level}_downsample")(x)
            skips.append(x)

    x = res_block(channels[-1], "mid_res_0")(x, t_emb)
    x = transformer(channels[-1], "mid_attn")(x, context)
    x = res_block(channels[-1], "mid_res_1")(x, t_emb)

    for up, level in enumerate(reversed(range(len(channels)))):
        width = channels[level]
        for i in range(cfg.layers_per_block + 1):
            x = keras.layers.Concatenate(dtype=dtype, name=f"up_{up}_concat_{i}")([x, skips.pop()])
            x = res_block(width, f"up_{up}_res_{i}")(x, t_emb)
            if cfg.attention_levels[level]:
                x = transformer(width, f"up_{up}_attn_{i}")(x, context)
        if level > 0:
            x = keras.layers.UpSampling2D(2, dtype=dtype, name=f"up_{up}_upsample_nearest")(x)
            x = conv(width, f"up_{up}_upsample")(x)

    x = GroupNormalization(cfg.norm_groups, epsilon=cfg.norm_eps, dtype=dtype, name="norm_out")(x)
    x = keras.layers.Activation("silu", dtype=dtype, name="act_out")(x)
    output = conv(cfg.out_channels, "conv_out")(x)
    model = keras.Model({"latent": latent, "timestep_embedding": t_input, "context": context}, output, name=name)
    model.sd_keras_builder = functools.partial(build_diffusion_model, cfg, name=name)
    return model
