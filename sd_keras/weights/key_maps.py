"""Declarative key maps: sd_keras layer paths ↔ diffusers module names ↔ original (CompVis/LDM) module names.

Each table row says where one sd_keras layer lives in each checkpoint layout and what kind of module it is:

    Row(keras="down_{level}_res_{i}", diffusers="down_blocks.{level}.resnets.{i}",
        original="input_blocks.{n}.0", module=UNET_RESNET, repeat="down_res")

``module`` is either a leaf module type (a key of ``MODULE_PARAMS``: how its torch parameters become Keras
variables) or a nested table whose names are relative to the row's. ``repeat`` names the block positions the
row is instantiated at (``unet_positions``, ``vae_positions``, ``text_positions`` give their format fields from
the config: ``level``, ``i``, ``u``, ``n``...). ``optional`` rows (a ResBlock's 1x1 shortcut) exist only where the
Keras model has that layer. ``None`` means the layer is absent from that layout.

``expand_modules(table, config, layout)`` flattens a table into ``ModuleEntry(keras, source, module)`` and
``expand_tensors`` into ``TensorEntry(keras variable path, source tensor key, transform)``; ``TRANSFORMS`` turns a
source tensor into the Keras variable's layout:

- ``kernel``: torch Linear ``(out, in)`` → Dense ``(in, out)``; Conv ``(out, in, kh, kw)`` → Conv2D
  ``(kh, kw, in, out)``. A 1x1 conv and a linear layer are interchangeable: SD 1's ``proj_in``/``proj_out`` are
  1x1 convs and SD 2's are linear (``UNetConfig.linear_proj`` picks which the Keras model has), and the VAE's
  mid-block attention is stored as 1x1 convs in original files and as linear layers by diffusers.
- ``copy``: norms, biases, embeddings.
- ``q``/``k``/``v``: a third of OpenCLIP's fused ``in_proj_weight`` (3·D, D) / ``in_proj_bias``.

The transformer's GEGLU projection needs no reordering: diffusers, the original code and sd_keras all take the
first half of ``ff.net.0.proj``'s outputs as the value and the second half as the gate.

Example:
    >>> from sd_keras.config import get_config
    >>> entries = expand_tensors(UNET, get_config("tiny").unet, "original")
    >>> entries[0]
    TensorEntry(keras='time_embedding_1/kernel', source='time_embed.0.weight', transform='kernel', optional=False)
"""

from typing import NamedTuple, Optional, Tuple, Union

import numpy as np

DIFFUSERS = "diffusers"
ORIGINAL = "original"
LAYOUTS = (DIFFUSERS, ORIGINAL)


class Row(NamedTuple):
    keras: str
    diffusers: Optional[str]
    original: Optional[str]
    module: Union[str, tuple]
    repeat: str = ""
    optional: bool = False


class ModuleEntry(NamedTuple):
    keras: str      # sd_keras layer path, e.g. "down_0_attn_0/transformer_block/attn1/q_proj"
    source: str     # module name in the checkpoint layout, e.g. "down_blocks.0.attentions.0.transformer_blocks..."
    module: str     # leaf module type (key of MODULE_PARAMS)
    optional: bool


class TensorEntry(NamedTuple):
    keras: str      # Keras variable path relative to the model, e.g. "conv_in/kernel"
    source: str     # tensor key in the checkpoint (without the component prefix)
    transform: str  # key of TRANSFORMS
    optional: bool


# Leaf module types: (Keras variable, torch parameter, transform). An empty parameter name means the module
# name is itself the tensor key (OpenCLIP's bare ``positional_embedding``).
MODULE_PARAMS = {
    "linear": (("kernel", "weight", "kernel"), ("bias", "bias", "copy")),
    "linear_no_bias": (("kernel", "weight", "kernel"),),
    "conv": (("kernel", "weight", "kernel"), ("bias", "bias", "copy")),
    "norm": (("gamma", "weight", "copy"), ("beta", "bias", "copy")),
    "embedding": (("embeddings", "weight", "copy"),),
    "parameter": (("embeddings", "", "copy"),),
    "matrix": (("kernel", "", "copy"),),  # a bare (in, out) matrix used as x @ W (OpenCLIP's text_projection)
    "fused_q": (("kernel", "in_proj_weight", "q"), ("bias", "in_proj_bias", "q")),
    "fused_k": (("kernel", "in_proj_weight", "k"), ("bias", "in_proj_bias", "k")),
    "fused_v": (("kernel", "in_proj_weight", "v"), ("bias", "in_proj_bias", "v")),
}

# Module types a LoRA may target, and whether their kernel is a convolution.
LORA_MODULES = {"linear": False, "linear_no_bias": False, "conv": True}

# --------------------------------------------------------------------------------------------------- UNet
UNET_RESNET = (
    Row("norm1", "norm1", "in_layers.0", "norm"),
    Row("conv1", "conv1", "in_layers.2", "conv"),
    Row("time_emb_proj", "time_emb_proj", "emb_layers.1", "linear"),
    Row("norm2", "norm2", "out_layers.0", "norm"),
    Row("conv2", "conv2", "out_layers.3", "conv"),
    Row("conv_shortcut", "conv_shortcut", "skip_connection", "conv", optional=True),
)


def _attention(keras, torch):
    return (
        Row(f"{keras}/q_proj", f"{torch}.to_q", f"{torch}.to_q", "linear_no_bias"),
        Row(f"{keras}/k_proj", f"{torch}.to_k", f"{torch}.to_k", "linear_no_bias"),
        Row(f"{keras}/v_proj", f"{torch}.to_v", f"{torch}.to_v", "linear_no_bias"),
        Row(f"{keras}/out_proj", f"{torch}.to_out.0", f"{torch}.to_out.0", "linear"),
    )


_BLOCK = "transformer_blocks.0"
SPATIAL_TRANSFORMER = (
    Row("norm", "norm", "norm", "norm"),
    Row("proj_in", "proj_in", "proj_in", "conv"),
    Row("transformer_block/norm1", f"{_BLOCK}.norm1", f"{_BLOCK}.norm1", "norm"),
    *_attention("transformer_block/attn1", f"{_BLOCK}.attn1"),
    Row("transformer_block/norm2", f"{_BLOCK}.norm2", f"{_BLOCK}.norm2", "norm"),
    *_attention("transformer_block/attn2", f"{_BLOCK}.attn2"),
    Row("transformer_block/norm3", f"{_BLOCK}.norm3", f"{_BLOCK}.norm3", "norm"),
    Row("transformer_block/ff_proj", f"{_BLOCK}.ff.net.0.proj", f"{_BLOCK}.ff.net.0.proj", "linear"),
    Row("transformer_block/ff_out", f"{_BLOCK}.ff.net.2", f"{_BLOCK}.ff.net.2", "linear"),
    Row("proj_out", "proj_out", "proj_out", "conv"),
)

UNET = (
    Row("time_embedding_1", "time_embedding.linear_1", "time_embed.0", "linear"),
    Row("time_embedding_2", "time_embedding.linear_2", "time_embed.2", "linear"),
    Row("conv_in", "conv_in", "input_blocks.0.0", "conv"),
    Row("down_{level}_res_{i}", "down_blocks.{level}.resnets.{i}", "input_blocks.{n}.0", UNET_RESNET, "down_res"),
    Row("down_{level}_attn_{i}", "down_blocks.{level}.attentions.{i}", "input_blocks.{n}.1", SPATIAL_TRANSFORMER,
        "down_attn"),
    Row("down_{level}_downsample", "down_blocks.{level}.downsamplers.0.conv", "input_blocks.{n}.0.op", "conv",
        "downsample"),
    Row("mid_res_0", "mid_block.resnets.0", "middle_block.0", UNET_RESNET),
    Row("mid_attn", "mid_block.attentions.0", "middle_block.1", SPATIAL_TRANSFORMER),
    Row("mid_res_1", "mid_block.resnets.1", "middle_block.2", UNET_RESNET),
    Row("up_{u}_res_{i}", "up_blocks.{u}.resnets.{i}", "output_blocks.{n}.0", UNET_RESNET, "up_res"),
    Row("up_{u}_attn_{i}", "up_blocks.{u}.attentions.{i}", "output_blocks.{n}.1", SPATIAL_TRANSFORMER, "up_attn"),
    Row("up_{u}_upsample", "up_blocks.{u}.upsamplers.0.conv", "output_blocks.{n}.{slot}.conv", "conv", "upsample"),
    Row("norm_out", "conv_norm_out", "out.0", "norm"),
    Row("conv_out", "conv_out", "out.2", "conv"),
)

# ---------------------------------------------------------------------------------------------------- VAE
VAE_RESNET = (
    Row("norm1", "norm1", "norm1", "norm"),
    Row("conv1", "conv1", "conv1", "conv"),
    Row("norm2", "norm2", "norm2", "norm"),
    Row("conv2", "conv2", "conv2", "conv"),
    Row("conv_shortcut", "conv_shortcut", "nin_shortcut", "conv", optional=True),
)

VAE_ATTENTION = (
    Row("norm", "group_norm", "norm", "norm"),
    Row("to_q", "to_q", "q", "conv"),
    Row("to_k", "to_k", "k", "conv"),
    Row("to_v", "to_v", "v", "conv"),
    Row("proj_out", "to_out.0", "proj_out", "conv"),
)


def _vae_mid(part):
    return (
        Row("mid_res_0", f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", VAE_RESNET),
        Row("mid_attn", f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", VAE_ATTENTION),
        Row("mid_res_1", f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", VAE_RESNET),
    )


DECODER = (
    Row("post_quant_conv", "post_quant_conv", "post_quant_conv", "conv"),
    Row("conv_in", "decoder.conv_in", "decoder.conv_in", "conv"),
    *_vae_mid("decoder"),
    # the original layout numbers decoder levels from the top resolution: up.{level}, level = levels-1-u
    Row("up_{u}_res_{i}", "decoder.up_blocks.{u}.resnets.{i}", "decoder.up.{level}.block.{i}", VAE_RESNET, "up_res"),
    Row("up_{u}_upsample", "decoder.up_blocks.{u}.upsamplers.0.conv", "decoder.up.{level}.upsample.conv", "conv",
        "upsample"),
    Row("norm_out", "decoder.conv_norm_out", "decoder.norm_out", "norm"),
    Row("conv_out", "decoder.conv_out", "decoder.conv_out", "conv"),
)

IMAGE_ENCODER = (
    Row("conv_in", "encoder.conv_in", "encoder.conv_in", "conv"),
    Row("down_{level}_res_{i}", "encoder.down_blocks.{level}.resnets.{i}", "encoder.down.{level}.block.{i}",
        VAE_RESNET, "down_res"),
    Row("down_{level}_downsample", "encoder.down_blocks.{level}.downsamplers.0.conv",
        "encoder.down.{level}.downsample.conv", "conv", "downsample"),
    *_vae_mid("encoder"),
    Row("norm_out", "encoder.conv_norm_out", "encoder.norm_out", "norm"),
    Row("conv_out", "encoder.conv_out", "encoder.conv_out", "conv"),
    Row("quant_conv", "quant_conv", "quant_conv", "conv"),
)

# Older diffusers VAE folders name the mid-block attention query/key/value/proj_attn (diffusers renames them
# when it loads). Source-name aliases: (old infix, current infix).
DIFFUSERS_VAE_ALIASES = (
    (".attentions.0.query.", ".attentions.0.to_q."),
    (".attentions.0.key.", ".attentions.0.to_k."),
    (".attentions.0.value.", ".attentions.0.to_v."),
    (".attentions.0.proj_attn.", ".attentions.0.to_out.0."),
)

# ------------------------------------------------------------------------------------------ text encoders
# Hugging Face CLIPTextModel layout: diffusers' text_encoder/ and SD 1 single files
# (``cond_stage_model.transformer.`` + these names).
_HF_LAYER = "text_model.encoder.layers.{i}"
CLIP_LAYER_HF = (
    Row("layer_norm1", "layer_norm1", "layer_norm1", "norm"),
    Row("self_attn/q_proj", "self_attn.q_proj", "self_attn.q_proj", "linear"),
    Row("self_attn/k_proj", "self_attn.k_proj", "self_attn.k_proj", "linear"),
    Row("self_attn/v_proj", "self_attn.v_proj", "self_attn.v_proj", "linear"),
    Row("self_attn/out_proj", "self_attn.out_proj", "self_attn.out_proj", "linear"),
    Row("layer_norm2", "layer_norm2", "layer_norm2", "norm"),
    Row("fc1", "mlp.fc1", "mlp.fc1", "linear"),
    Row("fc2", "mlp.fc2", "mlp.fc2", "linear"),
)
TEXT_ENCODER_HF = (
    Row("embeddings/token_embedding", "text_model.embeddings.token_embedding",
        "text_model.embeddings.token_embedding", "embedding"),
    Row("embeddings/position_embedding", "text_model.embeddings.position_embedding",
        "text_model.embeddings.position_embedding", "embedding"),
    Row("encoder_layer_{i}", _HF_LAYER, _HF_LAYER, CLIP_LAYER_HF, "layer"),
    Row("final_layer_norm", "text_model.final_layer_norm", "text_model.final_layer_norm", "norm"),
)

# OpenCLIP layout: SD 2 single files (``cond_stage_model.model.`` + these names); original layout only.
CLIP_LAYER_OPEN_CLIP = (
    Row("layer_norm1", None, "ln_1", "norm"),
    Row("self_attn/q_proj", None, "attn", "fused_q"),
    Row("self_attn/k_proj", None, "attn", "fused_k"),
    Row("self_attn/v_proj", None, "attn", "fused_v"),
    Row("self_attn/out_proj", None, "attn.out_proj", "linear"),
    Row("layer_norm2", None, "ln_2", "norm"),
    Row("fc1", None, "mlp.c_fc", "linear"),
    Row("fc2", None, "mlp.c_proj", "linear"),
)
TEXT_ENCODER_OPEN_CLIP = (
    Row("embeddings/token_embedding", None, "token_embedding", "embedding"),
    Row("embeddings/position_embedding", None, "positional_embedding", "parameter"),
    Row("encoder_layer_{i}", None, "transformer.resblocks.{i}", CLIP_LAYER_OPEN_CLIP, "layer"),
    Row("final_layer_norm", None, "ln_final", "norm"),
)

# Where each component's tensors live in an original single file.
ORIGINAL_PREFIXES = {
    "diffusion_model": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder_hf": "cond_stage_model.transformer.",
    "text_encoder_open_clip": "cond_stage_model.model.",
}

# Tensors of an original single file that sd_keras does not use (matched as suffixes of the full key).
ORIGINAL_UNUSED_SUFFIXES = (
    "embeddings.position_ids",   # a buffer of HF CLIP
    "model.text_projection",     # OpenCLIP's projection to the joint embedding space, unused by SD
    "model.logit_scale",
    "model.attn_mask",
)


# ------------------------------------------------------------------------------------------------ positions
def unet_positions(config):
    """Format fields of every repeated UNet block (``config``: a ``UNetConfig``).

    Original layout: ``input_blocks`` are numbered conv_in (0), then per level ``layers_per_block`` blocks and a
    downsample (all but the last level); ``output_blocks`` hold ``layers_per_block + 1`` blocks per level, the
    last of which also carries the upsample, after its transformer when the level has attention.
    """
    levels = len(config.block_out_channels)
    per_level = config.layers_per_block
    positions = {name: [] for name in ("down_res", "down_attn", "downsample", "up_res", "up_attn", "upsample")}
    for level in range(levels):
        for i in range(per_level):
            fields = {"level": level, "i": i, "n": 1 + level * (per_level + 1) + i}
            positions["down_res"].append(fields)
            if config.attention_levels[level]:
                positions["down_attn"].append(fields)
        if level < levels - 1:
            positions["downsample"].append({"level": level, "n": 1 + level * (per_level + 1) + per_level})
    for u in range(levels):
        level = levels - 1 - u
        for i in range(per_level + 1):
            fields = {"u": u, "i": i, "n": u * (per_level + 1) + i}
            positions["up_res"].append(fields)
            if config.attention_levels[level]:
                positions["up_attn"].append(fields)
        if level > 0:
            slot = 2 if config.attention_levels[level] else 1
            positions["upsample"].append({"u": u, "n": u * (per_level + 1) + per_level, "slot": slot})
    return positions


def vae_positions(config):
    """Format fields of the VAE's repeated blocks (``config``: a ``VAEConfig``)."""
    levels = len(config.block_out_channels)
    positions = {"down_res": [], "downsample": [], "up_res": [], "upsample": []}
    for level in range(levels):
        positions["down_res"] += [{"level": level, "i": i} for i in range(config.layers_per_block)]
        if level < levels - 1:
            positions["downsample"].append({"level": level})
    for u in range(levels):
        level = levels - 1 - u
        positions["up_res"] += [{"u": u, "level": level, "i": i} for i in range(config.layers_per_block + 1)]
        if u < levels - 1:
            positions["upsample"].append({"u": u, "level": level})
    return positions


def text_positions(config):
    """Format fields of the text encoder's layers (``config``: a ``TextEncoderConfig``)."""
    return {"layer": [{"i": i} for i in range(config.num_layers)]}


def positions_for(table, config):
    if hasattr(table, "positions"):  # a table that carries its own positions (``sd_keras.weights.sdxl_key_maps``)
        return table.positions(config)
    if table is UNET:
        return unet_positions(config)
    if table in (DECODER, IMAGE_ENCODER):
        return vae_positions(config)
    return text_positions(config)


# ------------------------------------------------------------------------------------------------ expansion
def _join(prefix, name):
    if not prefix:
        return name
    return f"{prefix}.{name}" if name else prefix


def _expand(rows, layout, positions, keras_prefix="", source_prefix="", fields=None, optional=False):
    for row in rows:
        source = getattr(row, layout)
        if source is None:
            raise ValueError(f"layer {row.keras!r} has no {layout} name in this table")
        for row_fields in (positions[row.repeat] if row.repeat else [fields or {}]):
            merged = {**(fields or {}), **row_fields}
            keras = row.keras.format(**merged)
            keras = f"{keras_prefix}/{keras}" if keras_prefix else keras
            torch_name = _join(source_prefix, source.format(**merged))
            if isinstance(row.module, tuple):
                yield from _expand(row.module, layout, positions, keras, torch_name, merged, optional or row.optional)
            else:
                yield ModuleEntry(keras, torch_name, row.module, optional or row.optional)


def expand_modules(table, config, layout):
    """Every leaf module of ``table`` for ``config``: ``[ModuleEntry(keras, source, module, optional)]``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return list(_expand(table, layout, positions_for(table, config)))


def expand_tensors(table, config, layout):
    """Every tensor of ``table`` for ``config``: ``[TensorEntry(keras variable, source key, transform, optional)]``."""
    entries = []
    for module in expand_modules(table, config, layout):
        for variable, parameter, transform in MODULE_PARAMS[module.module]:
            entries.append(TensorEntry(f"{module.keras}/{variable}", _join(module.source, parameter), transform,
                                       module.optional))
    return entries


# ----------------------------------------------------------------------------------------------- transforms
def _kernel(array, target_shape):
    array = np.asarray(array)
    if array.ndim == 4:  # torch conv (out, in, kh, kw) -> (kh, kw, in, out)
        array = array.transpose(2, 3, 1, 0)
    elif array.ndim == 2:  # torch linear (out, in) -> (in, out)
        array = array.T
    else:
        raise ValueError(f"a kernel must have 2 or 4 dimensions, got shape {array.shape}")
    if len(target_shape) == 2 and array.ndim == 4:
        if array.shape[:2] != (1, 1):
            raise ValueError(f"cannot use a {array.shape[0]}x{array.shape[1]} convolution as a linear layer")
        array = array.reshape(array.shape[2:])
    elif len(target_shape) == 4 and array.ndim == 2:
        array = array.reshape((1, 1) + array.shape)
    return array


def _third(index):
    def transform(array, target_shape):
        array = np.asarray(array)
        if array.shape[0] % 3:
            raise ValueError(f"a fused q/k/v tensor must have 3*n rows, got shape {array.shape}")
        part = np.split(array, 3, axis=0)[index]
        return _kernel(part, target_shape) if part.ndim == 2 else part

    return transform


TRANSFORMS = {
    "copy": lambda array, target_shape: np.asarray(array),
    "kernel": _kernel,
    "q": _third(0),
    "k": _third(1),
    "v": _third(2),
}


def transformed_shape(transform, shape, target_shape):
    """The shape ``TRANSFORMS[transform]`` gives for a source tensor of ``shape`` (no data touched)."""
    dummy = np.broadcast_to(np.zeros((), np.float32), tuple(shape))
    return tuple(TRANSFORMS[transform](dummy, target_shape).shape)


def lora_kernel_delta(up, down, target_shape):
    """``up @ down`` of a LoRA pair (torch layouts) as a delta for a Keras kernel of ``target_shape``.

    Linear: up (out, r), down (r, in). Conv: up (out, r, 1, 1), down (r, in, kh, kw) — the product is the
    (out, in, kh, kw) kernel of the two convolutions applied one after the other.
    """
    up = np.asarray(up, np.float32)
    down = np.asarray(down, np.float32)
    up_matrix = up.reshape(up.shape[0], up.shape[1])
    product = up_matrix @ down.reshape(down.shape[0], -1)
    product = product.reshape((up.shape[0],) + down.shape[1:])
    return _kernel(product, target_shape)


Table = Tuple[Row, ...]
