"""SDXL model configurations: the base model (two text encoders, added conditioning), the refiner and the
9-channel inpainting UNet, as frozen dataclasses beside ``sd_keras.config``'s SD 1.x / 2.x ones.

The SDXL parts extend the SD ones (``SDXLUNetConfig`` is a ``UNetConfig``, ``SDXLTextEncoderConfig`` a
``TextEncoderConfig``), so the SD layer code builds them; a field's default is what SD 1.x / 2.x do.

- Text encoders condition on their **penultimate** layer (no final LayerNorm): CLIP ViT-L/14 (768 wide) and, in
  the base model, OpenCLIP ViT-bigG/14 (1280 wide); the UNet's context is their outputs concatenated (2048). The
  encoder with ``projection_dim`` also returns the **pooled** embedding: after all layers and the final
  LayerNorm, the token at the first position of the prompt's highest token id (the end-of-text token, the CLIP
  vocabulary's last id; OpenCLIP's ``argmax`` over the ids), times ``text_projection``.
- The UNet adds ``time_ids`` (base: ``original_size``, ``crops_coords_top_left``, ``target_size``: 6 values;
  refiner: ``original_size``, ``crops_coords_top_left``, ``aesthetic_score``: 5) to the time embedding: each
  value through the timestep sinusoid (``addition_time_embed_dim`` wide), concatenated with the pooled text
  embedding, through ``add_embedding`` (Dense, SiLU, Dense).
- The VAE is SD's with ``scaling_factor`` 0.13025.

Example:
    >>> from sd_keras.config_sdxl import get_sdxl_config
    >>> config = get_sdxl_config("sd-xl")
    >>> config.unet.context_dim, config.unet.transformer_depth, config.unet.addition_input_dim
    (2048, (0, 2, 10), 2816)
    >>> SDXLConfig.from_dict(config.to_dict()) == config
    True
"""

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

from sd_keras.config import PREDICTION_TYPES, TextEncoderConfig, UNetConfig, VAEConfig, _from_dict
from sd_keras.errors import InputError


@dataclass(frozen=True)
class SDXLTextEncoderConfig(TextEncoderConfig):
    """A CLIP text transformer of which SDXL uses the penultimate layer's output.

    ``num_layers`` is the whole model's depth (as in its checkpoint). Without ``projection_dim`` only the first
    ``num_layers - 1`` layers are built; with it all are, plus the final LayerNorm and the bias-free
    ``text_projection`` that give the pooled embedding.
    """

    projection_dim: Optional[int] = None

    def __post_init__(self):
        super().__post_init__()
        if self.num_layers < 2:
            raise InputError(f"text encoder num_layers must be at least 2 (SDXL uses the penultimate layer), got "
                             f"{self.num_layers}")

    @property
    def built_layers(self):
        return self.num_layers if self.projection_dim else self.num_layers - 1


@dataclass(frozen=True)
class SDXLUNetConfig(UNetConfig):
    """SDXL UNet: ``UNetConfig`` plus transformer blocks per level and the added (text, time) conditioning.

    ``transformer_depth``: transformer blocks in each level's spatial transformers (stored as 0 for a level
    without attention, except the last); the middle uses the last level's (as diffusers does). ``num_time_ids``: 6 (base) or 5
    (refiner); ``pooled_dim``: width of the pooled text embedding.
    """

    transformer_depth: Tuple[int, ...] = ()
    addition_time_embed_dim: int = 256
    num_time_ids: int = 6
    pooled_dim: int = 1280

    def __post_init__(self):
        super().__post_init__()
        if len(self.transformer_depth) != len(self.block_out_channels):
            raise InputError(f"transformer_depth {self.transformer_depth} needs one entry per block_out_channels "
                             f"entry ({len(self.block_out_channels)})")
        for depth, attention in zip(self.transformer_depth, self.attention_levels):
            if attention and depth < 1:
                raise InputError(f"transformer_depth {self.transformer_depth}: a level with attention needs at "
                                 "least one transformer block")
        # a level without attention has no transformer blocks (the last level's depth also sets the middle's)
        depth = tuple(d if a or index == len(self.transformer_depth) - 1 else 0
                      for index, (d, a) in enumerate(zip(self.transformer_depth, self.attention_levels)))
        object.__setattr__(self, "transformer_depth", depth)
        if self.transformer_depth[-1] < 1:
            raise InputError(f"transformer_depth {self.transformer_depth}: the middle block (last level's depth) "
                             "needs at least one transformer block")
        if self.addition_time_embed_dim % 2 or self.addition_time_embed_dim < 2:
            raise InputError(f"addition_time_embed_dim must be even and positive, got {self.addition_time_embed_dim}")

    @property
    def mid_transformer_depth(self):
        return self.transformer_depth[-1]

    @property
    def addition_input_dim(self):
        """Width of ``add_embedding``'s input: the time ids' sinusoids and the pooled text embedding."""
        return self.num_time_ids * self.addition_time_embed_dim + self.pooled_dim


@dataclass(frozen=True)
class SDXLConfig:
    """Everything that defines one SDXL model (base, refiner or inpainting).

    ``text_encoder`` is CLIP ViT-L (None for the refiner, ``SDXLRefinerConfig``), ``text_encoder_2`` OpenCLIP ViT-bigG with the
    projection. ``pad_token_ids``: what each encoder's prompts are padded with (CLIP: end-of-text 49407; the
    OpenCLIP tokenizer of SDXL: "!", id 0). ``force_zeros_for_empty_prompt``: an empty negative prompt means zero
    embeddings (diffusers' default for SDXL base), not the encoded empty string.
    """

    name: str
    text_encoder: Optional[SDXLTextEncoderConfig]
    text_encoder_2: SDXLTextEncoderConfig
    unet: SDXLUNetConfig
    vae: VAEConfig
    image_size: Tuple[int, int] = (1024, 1024)
    prediction_type: str = "epsilon"
    pad_token_ids: Tuple[int, ...] = (49407, 0)
    force_zeros_for_empty_prompt: bool = True
    family: str = "sdxl"

    FAMILY = "sdxl"

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise InputError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.text_encoder_2.projection_dim is None:
            raise InputError("text_encoder_2 needs projection_dim (its pooled output conditions the UNet)")
        if self.unet.context_dim != self.context_width:
            raise InputError(f"unet.context_dim {self.unet.context_dim} != the text encoders' widths "
                             f"({' + '.join(str(e.width) for e in self.encoders)})")
        if self.unet.pooled_dim != self.text_encoder_2.projection_dim:
            raise InputError(f"unet.pooled_dim {self.unet.pooled_dim} != text_encoder_2.projection_dim "
                             f"{self.text_encoder_2.projection_dim}")
        if (self.text_encoder is None) != isinstance(self, SDXLRefinerConfig):
            raise InputError("text_encoder: the SDXL base model needs CLIP ViT-L (text_encoder); the refiner "
                             "(SDXLRefinerConfig) has none")
        if self.family != type(self).FAMILY:
            raise InputError(f"family must be {type(self).FAMILY!r} for a {type(self).__name__}, got {self.family!r}")
        if len(self.pad_token_ids) != len(self.encoders):
            raise InputError(f"pad_token_ids {self.pad_token_ids} needs one entry per text encoder "
                             f"({len(self.encoders)})")

    @property
    def encoders(self):
        return tuple(e for e in (self.text_encoder, self.text_encoder_2) if e is not None)

    @property
    def context_width(self):
        return sum(e.width for e in self.encoders)

    @property
    def is_refiner(self):
        return self.text_encoder is None

    @property
    def pad_token_id(self):
        """The first encoder's pad id: prompts are tokenized with it (each encoder re-pads its own copy)."""
        return self.pad_token_ids[0]

    def to_dict(self):
        """Nested dict of plain values (``json.dumps`` writes it as is)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        """Inverse of ``to_dict`` (also accepts the lists that JSON gives back)."""
        data = dict(data)
        parts = {"text_encoder": SDXLTextEncoderConfig, "text_encoder_2": SDXLTextEncoderConfig,
                 "unet": SDXLUNetConfig, "vae": VAEConfig}
        for key, part_cls in parts.items():
            if data.get(key) is not None:
                data[key] = _from_dict(part_cls, data[key])
        return _from_dict(cls, data)


@dataclass(frozen=True)
class SDXLRefinerConfig(SDXLConfig):
    """The SDXL refiner: ``text_encoder`` is None (OpenCLIP bigG only), 5 time ids (with the aesthetic score)."""

    FAMILY = "sdxl-refiner"


def sdxl_config_from_dict(data):
    """``SDXLConfig`` or ``SDXLRefinerConfig`` from ``to_dict``'s output, by its ``family``."""
    classes = {cls.FAMILY: cls for cls in (SDXLConfig, SDXLRefinerConfig)}
    family = data.get("family", "sdxl")
    if family not in classes:
        raise InputError(f"family: {family!r} is not an SDXL family ({', '.join(classes)})")
    return classes[family].from_dict(data)


CLIP_L = SDXLTextEncoderConfig(width=768, num_layers=12, num_heads=12, intermediate_size=3072,
                               activation="quick_gelu")
OPEN_CLIP_BIG_G = SDXLTextEncoderConfig(width=1280, num_layers=32, num_heads=20, intermediate_size=5120,
                                        activation="gelu", projection_dim=1280)
SDXL_VAE = VAEConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2, scaling_factor=0.13025,
                     norm_eps=1e-6)

SDXL_BASE = SDXLConfig(  # stabilityai/stable-diffusion-xl-base-1.0 (UNet 2.57 B parameters)
    name="sd-xl",
    text_encoder=CLIP_L,
    text_encoder_2=OPEN_CLIP_BIG_G,
    unet=SDXLUNetConfig(block_out_channels=(320, 640, 1280), layers_per_block=2,
                        attention_levels=(False, True, True), num_heads=None, head_size=64, context_dim=2048,
                        linear_proj=True, timestep_dim=320, time_embed_dim=1280, gelu_approximate=False,
                        transformer_norm_eps=1e-6, transformer_depth=(1, 2, 10), addition_time_embed_dim=256,
                        num_time_ids=6, pooled_dim=1280),
    vae=SDXL_VAE,
)

SDXL_REFINER = SDXLRefinerConfig(  # stabilityai/stable-diffusion-xl-refiner-1.0
    name="sd-xl-refiner",
    text_encoder=None,
    text_encoder_2=OPEN_CLIP_BIG_G,
    unet=SDXLUNetConfig(block_out_channels=(384, 768, 1536, 1536), layers_per_block=2,
                        attention_levels=(False, True, True, False), num_heads=None, head_size=64,
                        context_dim=1280, linear_proj=True, timestep_dim=384, time_embed_dim=1536,
                        gelu_approximate=False, transformer_norm_eps=1e-6, transformer_depth=(4, 4, 4, 4),
                        addition_time_embed_dim=256, num_time_ids=5, pooled_dim=1280),
    vae=SDXL_VAE,
    pad_token_ids=(0,),
    force_zeros_for_empty_prompt=False,
    family="sdxl-refiner",
)

SDXL_INPAINT = dataclasses.replace(  # diffusers/stable-diffusion-xl-1.0-inpainting-0.1 shapes
    SDXL_BASE, name="sd-xl-inpainting", unet=dataclasses.replace(SDXL_BASE.unet, in_channels=9))

SDXL_PRESETS = {config.name: config for config in (SDXL_BASE, SDXL_REFINER, SDXL_INPAINT)}


def get_sdxl_config(name):
    """The ``SDXLConfig`` of SDXL preset ``name`` (an ``SDXLConfig`` passes through)."""
    if isinstance(name, SDXLConfig):
        return name
    try:
        return SDXL_PRESETS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown SDXL preset {name!r}; known: {', '.join(sorted(SDXL_PRESETS))}") from None


def is_sdxl(config):
    return isinstance(config, SDXLConfig)


__all__ = ["SDXLConfig", "SDXLRefinerConfig", "sdxl_config_from_dict", "SDXLTextEncoderConfig", "SDXLUNetConfig", "SDXL_PRESETS", "get_sdxl_config"]
