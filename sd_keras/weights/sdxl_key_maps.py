"""Key maps of SDXL: sd_keras layer paths ↔ diffusers names ↔ the original (Stability ``sgm``) single-file names.

Built from the SD tables of ``sd_keras.weights.key_maps`` (same rows, same leaf module types), with what SDXL
adds:

- the UNet's spatial transformers hold ``transformer_depth[level]`` blocks (``transformer_blocks.{d}`` in both
  layouts; sd_keras names them ``transformer_block``, ``transformer_block_1``, ...), the middle one the last
  level's depth;
- ``add_embedding.linear_1/2`` (diffusers) = ``label_emb.0.0`` / ``label_emb.0.2`` (original);
- the text encoders: CLIP ViT-L in the Hugging Face layout (diffusers ``text_encoder/``, original
  ``conditioner.embedders.0.transformer.``) without its last layer and final LayerNorm (SDXL uses the penultimate
  layer); OpenCLIP ViT-bigG as diffusers' ``CLIPTextModelWithProjection`` (``text_projection.weight``, a Linear
  (out, in)) or in OpenCLIP's layout (``conditioner.embedders.1.model.``, the refiner's
  ``conditioner.embedders.0.model.``: fused ``attn.in_proj_weight``, ``text_projection`` a bare (in, out) matrix).

Example:
    >>> from sd_keras.models.sdxl import tiny_sdxl_config
    >>> from sd_keras.weights import key_maps
    >>> entries = key_maps.expand_modules(UNET, tiny_sdxl_config().unet, "original")
    >>> [e.source for e in entries if e.keras.startswith("mid_attn/transformer_block_2/attn1/q")]
    ['middle_block.1.transformer_blocks.2.attn1.to_q']
"""

from sd_keras.weights import key_maps
from sd_keras.weights.key_maps import Row


class PositionedTable(tuple):
    """A key-map table (tuple of ``Row``) that says where its repeated rows are: ``positions(config)``."""

    def __new__(cls, rows, positions):
        table = super().__new__(cls, rows)
        table.positions = positions
        return table


def _block_name(d):
    return "transformer_block" if d == 0 else f"transformer_block_{d}"


_OUTER = tuple(row for row in key_maps.SPATIAL_TRANSFORMER if "/" not in row.keras)  # norm, proj_in, proj_out
_BLOCK = tuple(
    Row(row.keras.split("/", 1)[1], row.diffusers.split(".", 2)[2], row.original.split(".", 2)[2], row.module)
    for row in key_maps.SPATIAL_TRANSFORMER if row.keras.startswith("transformer_block/"))

def _unet_rows():
    rows = []
    for row in key_maps.UNET:
        if row.module is not key_maps.SPATIAL_TRANSFORMER:
            rows.append(row)
            if row.keras == "time_embedding_2":
                rows += [Row("add_embedding_1", "add_embedding.linear_1", "label_emb.0.0", "linear"),
                         Row("add_embedding_2", "add_embedding.linear_2", "label_emb.0.2", "linear")]
            continue
        repeat = row.repeat or "mid_attn"
        rows.append(row._replace(module=_OUTER))
        rows.append(Row(row.keras + "/{block}", row.diffusers + ".transformer_blocks.{d}",
                        row.original + ".transformer_blocks.{d}", _BLOCK, repeat + "_block"))
    return tuple(rows)


def unet_positions(config):
    """``key_maps.unet_positions`` plus every transformer block (``d``, ``block``) of the SDXL spatial
    transformers (``config``: an ``SDXLUNetConfig``)."""
    positions = key_maps.unet_positions(config)
    levels = len(config.block_out_channels)
    depth = config.transformer_depth
    positions["down_attn_block"] = [dict(fields, d=d, block=_block_name(d)) for fields in positions["down_attn"]
                                    for d in range(depth[fields["level"]])]
    positions["up_attn_block"] = [dict(fields, d=d, block=_block_name(d)) for fields in positions["up_attn"]
                                  for d in range(depth[levels - 1 - fields["u"]])]
    positions["mid_attn_block"] = [{"d": d, "block": _block_name(d)} for d in range(config.mid_transformer_depth)]
    return positions


UNET = PositionedTable(_unet_rows(), unet_positions)


def text_positions(config):
    """The layers built for an SDXL text encoder (``config``: an ``SDXLTextEncoderConfig``)."""
    return {"layer": [{"i": i} for i in range(config.built_layers)]}


_HF_FINAL = tuple(row for row in key_maps.TEXT_ENCODER_HF if row.keras == "final_layer_norm")
_HF_BODY = tuple(row for row in key_maps.TEXT_ENCODER_HF if row.keras != "final_layer_norm")
_OPEN_CLIP_FINAL = tuple(row for row in key_maps.TEXT_ENCODER_OPEN_CLIP if row.keras == "final_layer_norm")
_OPEN_CLIP_BODY = tuple(row for row in key_maps.TEXT_ENCODER_OPEN_CLIP if row.keras != "final_layer_norm")

# CLIP ViT-L (penultimate layer only): diffusers text_encoder/ and the original conditioner.embedders.0.transformer.
TEXT_ENCODER_HF = PositionedTable(_HF_BODY, text_positions)
# OpenCLIP bigG as diffusers' CLIPTextModelWithProjection (text_encoder_2/)
TEXT_ENCODER_HF_PROJECTION = PositionedTable(
    _HF_BODY + _HF_FINAL + (Row("text_projection", "text_projection", None, "linear_no_bias"),), text_positions)
# OpenCLIP bigG in OpenCLIP's own layout (original single files)
TEXT_ENCODER_OPEN_CLIP_PROJECTION = PositionedTable(
    _OPEN_CLIP_BODY + _OPEN_CLIP_FINAL + (Row("text_projection", None, "text_projection", "matrix"),),
    text_positions)
# CLIP ViT-L in an OpenCLIP layout does not occur in SDXL files; a penultimate-only OpenCLIP table is for LoRAs
TEXT_ENCODER_OPEN_CLIP = PositionedTable(_OPEN_CLIP_BODY, text_positions)


def text_table(config, layout):
    """The table of an SDXL text encoder for ``layout`` ("diffusers" or "original")."""
    if layout == key_maps.DIFFUSERS:
        return TEXT_ENCODER_HF_PROJECTION if config.projection_dim else TEXT_ENCODER_HF
    if config.projection_dim:
        return TEXT_ENCODER_OPEN_CLIP_PROJECTION
    return TEXT_ENCODER_HF  # CLIP ViT-L keeps the Hugging Face names in single files


# Where each component's tensors live in an original SDXL single file (base; the refiner's OpenCLIP is
# conditioner.embedders.0.model.).
ORIGINAL_PREFIXES = {
    "diffusion_model": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "conditioner.embedders.0.transformer.",
    "text_encoder_2": "conditioner.embedders.1.model.",
    "refiner_text_encoder_2": "conditioner.embedders.0.model.",
}
