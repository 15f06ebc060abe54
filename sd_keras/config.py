"""Model configurations (plain frozen dataclasses) and the preset registry.

Every architecture size of the text encoder, UNet and VAE comes from these configs; the layers in
``sd_keras.models`` hold no size literals. A preset is a named ``ModelConfig``; register one more by adding one
line to ``PRESETS`` (or ``PRESETS[config.name] = config`` from another module).

Example:
    >>> from sd_keras.config import get_config
    >>> config = get_config("sd-v1")
    >>> config.unet.block_out_channels, config.text_encoder.width
    ((320, 640, 1280, 1280), 768)
    >>> ModelConfig.from_dict(config.to_dict()) == config
    True
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Tuple

from sd_keras.errors import InputError

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_tanh")
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class TextEncoderConfig:
    """CLIP text transformer (pre-LayerNorm, causal self-attention).

    KerasCV's ``TextEncoder`` (SD 1.x, OpenAI CLIP ViT-L/14) and ``TextEncoderV2`` (SD 2.x, OpenCLIP ViT-H/14)
    differ in width, depth, heads and activation. ``TextEncoderV2`` builds only 23 of OpenCLIP's 24 layers (SD 2
    conditions on the penultimate layer) and still applies the final LayerNorm after them: ``num_layers=23``.
    KerasCV's V2 uses ``keras.ops.gelu``, whose default is the tanh approximation: ``activation="gelu_tanh"``
    (OpenCLIP itself uses the exact erf GELU, ``"gelu"``).
    """

    vocab_size: int = 49408
    max_length: int = 77
    width: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    activation: str = "quick_gelu"  # "quick_gelu" (x * sigmoid(1.702 x)) | "gelu" (erf) | "gelu_tanh"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise InputError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.width % self.num_heads:
            raise InputError(f"width {self.width} is not divisible by num_heads {self.num_heads}")


@dataclass(frozen=True)
class UNetConfig:
    """Conditional UNet of SD 1.x / 2.x.

    One level per entry of ``block_out_channels``: ``layers_per_block`` ResBlocks (each followed by a spatial
    transformer where ``attention_levels`` says so), then a stride-2 downsample except after the last level. The
    middle is ResBlock, transformer, ResBlock; the up path mirrors the down path with ``layers_per_block + 1``
    blocks per level. Exactly one of ``num_heads`` (fixed head count, SD 1.x: 8) and ``head_size`` (fixed head
    width, SD 2.x: 64) is set. ``linear_proj`` selects Dense proj_in/proj_out (SD 2.x) instead of 1x1 convs
    (SD 1.x). ``gelu_approximate`` matches KerasCV's GEGLU (tanh GELU); diffusers uses the exact GELU.
    """

    in_channels: int = 4  # 9 for inpainting UNets (latent + mask + masked-image latent)
    out_channels: int = 4
    block_out_channels: Tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_levels: Tuple[bool, ...] = (True, True, True, False)
    num_heads: Optional[int] = 8
    head_size: Optional[int] = None
    context_dim: int = 768
    linear_proj: bool = False
    timestep_dim: int = 320  # width of the sinusoidal "timestep_embedding" input
    time_embed_dim: int = 1280
    ff_mult: int = 4
    gelu_approximate: bool = True
    norm_groups: int = 32
    norm_eps: float = 1e-5
    transformer_norm_eps: float = 1e-5  # GroupNorm of the spatial transformers: KerasCV 1e-5, diffusers 1e-6

    def __post_init__(self):
        if len(self.attention_levels) != len(self.block_out_channels):
            raise InputError("attention_levels needs one entry per block_out_channels entry")
        if (self.num_heads is None) == (self.head_size is None):
            raise InputError("set exactly one of num_heads and head_size")
        for channels in self.block_out_channels:
            if channels % self.norm_groups:
                raise InputError(f"channels {channels} are not divisible by norm_groups {self.norm_groups}")
            self.attention_heads(channels)

    def attention_heads(self, channels):
        """(num_heads, head_size) of the spatial transformer of a level with ``channels`` channels."""
        divisor = self.num_heads if self.num_heads is not None else self.head_size
        if channels % divisor:
            raise InputError(f"channels {channels} are not divisible by {divisor} (num_heads / head_size)")
        if self.num_heads is not None:
            return self.num_heads, channels // self.num_heads
        return channels // self.head_size, self.head_size


@dataclass(frozen=True)
class VAEConfig:
    """KL autoencoder. ``len(block_out_channels) - 1`` stride-2 stages give the latent downsample factor (8)."""

    block_out_channels: Tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    image_channels: int = 3
    latent_channels: int = 4
    scaling_factor: float = 0.18215
    norm_groups: int = 32
    norm_eps: float = 1e-5  # KerasCV's value; diffusers' VAE uses 1e-6

    def __post_init__(self):
        for channels in self.block_out_channels:
            if channels % self.norm_groups:
                raise InputError(f"channels {channels} are not divisible by norm_groups {self.norm_groups}")

    @property
    def downsample_factor(self):
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines one Stable Diffusion version.

    ``image_size`` is the native (height, width). ``pad_token_id`` is what prompts are padded with to
    ``max_length``: KerasCV pads with the end token 49407 for both v1 and v2 (``StableDiffusionBase.encode_text``
    and ``_UNCONDITIONAL_TOKENS``); the original SD 2 / OpenCLIP tokenizer pads with 0.
    """

    name: str
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    image_size: Tuple[int, int] = (512, 512)
    prediction_type: str = "epsilon"
    pad_token_id: int = 49407

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise InputError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.unet.context_dim != self.text_encoder.width:
            raise InputError(f"unet.context_dim {self.unet.context_dim} != text_encoder.width "
                             f"{self.text_encoder.width}")

    def to_dict(self):
        """Nested dict of plain values (``json.dumps`` writes it as is)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        """Inverse of ``to_dict`` (also accepts the lists that JSON gives back)."""
        data = dict(data)
        parts = {"text_encoder": TextEncoderConfig, "unet": UNetConfig, "vae": VAEConfig}
        for key, part_cls in parts.items():
            if key in data:
                data[key] = _from_dict(part_cls, data[key])
        return _from_dict(cls, data)


def _from_dict(cls, data):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})


SD_V1 = ModelConfig(name="sd-v1")  # KerasCV StableDiffusion: SD 1.4 / 1.5 shapes

SD_V2 = ModelConfig(  # KerasCV StableDiffusionV2: SD 2.1-base shapes
    name="sd-v2",
    text_encoder=TextEncoderConfig(width=1024, num_layers=23, num_heads=16, intermediate_size=4096,
                                   activation="gelu_tanh"),
    unet=UNetConfig(num_heads=None, head_size=64, context_dim=1024, linear_proj=True),
)

TINY = ModelConfig(  # random weights for tests and smoke runs; still has every kind of block
    name="tiny",
    text_encoder=TextEncoderConfig(width=32, num_layers=2, num_heads=2, intermediate_size=64),
    unet=UNetConfig(block_out_channels=(32, 64), layers_per_block=1, attention_levels=(True, True),
                    num_heads=None, head_size=16, context_dim=32, linear_proj=True, timestep_dim=32,
                    time_embed_dim=64, ff_mult=2, norm_groups=8),
    vae=VAEConfig(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_groups=8),
    image_size=(64, 64),
)

SHAPES = ModelConfig(  # the shipped demo model: 128x128 images of the synthetic shapes (sd_keras.data.shapes)
    name="shapes",
    text_encoder=TextEncoderConfig(width=64, num_layers=3, num_heads=4, intermediate_size=256),
    unet=UNetConfig(block_out_channels=(64, 96, 96), layers_per_block=1, attention_levels=(True, True, True),
                    num_heads=None, head_size=32, context_dim=64, linear_proj=True, timestep_dim=64,
                    time_embed_dim=256, ff_mult=2, norm_groups=32),
    # trained so that the scaled latents have unit second moment, so no extra scaling
    vae=VAEConfig(block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_groups=16, scaling_factor=1.0),
    image_size=(128, 128),
)

PRESETS = {config.name: config for config in (SD_V1, SD_V2, TINY, SHAPES)}


def get_config(name):
    """The ``ModelConfig`` of preset ``name`` (a ``ModelConfig`` passes through); ``InputError`` naming the
    unknown preset and listing the known ones otherwise."""
    if isinstance(name, ModelConfig):
        return name
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
