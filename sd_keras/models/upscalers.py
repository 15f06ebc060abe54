"""AI image upscalers in Keras 3 (``keras.ops`` only, NHWC): ESRGAN / Real-ESRGAN ``RRDBNet`` and Real-ESRGAN's
compact ``SRVGGNetCompact``.

Both take an RGB image in [0, 1], shape ``(B, H, W, 3)``, and return ``(B, scale*H, scale*W, 3)`` (not clipped).

- **RRDBNet** (ESRGAN, Real-ESRGAN x4plus, BSRGAN, 4x-UltraSharp-style files): ``conv_first`` → ``num_block``
  residual-in-residual dense blocks (``rdb1..rdb3``, each five 3x3 convolutions with ``num_grow_ch`` growth,
  LeakyReLU 0.2, residuals scaled by 0.2) → ``conv_body`` + skip → two nearest-neighbour x2 upsamplings, each
  followed by a convolution (``conv_up1``, ``conv_up2``) → ``conv_hr`` → ``conv_last``. Real-ESRGAN's x2 and x1
  models first fold the image with a pixel unshuffle (factor 2 or 4), so they run the same x4 body at a lower
  resolution; their input height and width must then be multiples of that factor (``config.pad_multiple``;
  ``sd_keras.upscale`` pads by reflection and crops, as the reference implementations do). Old ESRGAN x2 / x8
  files have one or three upsampling stages instead of two.
- **SRVGGNetCompact** (realesr-general-x4v3, realesr-animevideov3): ``body_0`` 3x3 conv + PReLU, ``num_conv``
  more conv + PReLU pairs, a last conv to ``3*scale**2`` channels, a pixel shuffle, plus the nearest-neighbour
  upsampled input. Small enough for phones (about 1.2 M parameters at 64 features and 32 convolutions).

Layer names follow the new (basicsr) key layout with ``.`` replaced by ``_`` (``body_3_rdb2_conv4``), so a
loader maps ``body.3.rdb2.conv4.weight`` to ``body_3_rdb2_conv4/kernel`` by rule (``sd_keras.weights.upscalers``).

Example:
    >>> import numpy as np
    >>> config = UpscalerConfig("srvgg", scale=4, num_feat=8, num_conv=2)
    >>> model = build_upscaler(config)
    >>> tuple(model(np.zeros((1, 5, 7, 3), "float32")).shape)
    (1, 20, 28, 3)
"""

import dataclasses
import math

import keras
from keras import ops

from sd_keras.errors import InputError

ARCHITECTURES = ("rrdbnet", "srvgg")

__all__ = ["UpscalerConfig", "PixelShuffle", "PixelUnshuffle", "build_rrdbnet", "build_srvgg", "build_upscaler",
           "ARCHITECTURES"]


@dataclasses.dataclass(frozen=True)
class UpscalerConfig:
    """Architecture and sizes of an upscaler, as ``sd_keras.weights.upscalers`` reads them from a file.

    ``scale``: output size / input size (1, 2, 4 or 8). ``unshuffle``: pixel-unshuffle factor of the input (1, 2
    or 4; Real-ESRGAN x2 / x1 RRDBNet models), so the body upsamples by ``scale * unshuffle``.
    """

    architecture: str
    scale: int = 4
    in_channels: int = 3
    out_channels: int = 3
    num_feat: int = 64
    num_block: int = 23       # RRDBNet
    num_grow_ch: int = 32     # RRDBNet
    num_conv: int = 16        # SRVGGNetCompact
    unshuffle: int = 1        # RRDBNet (Real-ESRGAN x2: 2, x1: 4)

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"architecture {self.architecture!r}: not one of {', '.join(ARCHITECTURES)}")
        if self.scale < 1 or self.unshuffle not in (1, 2, 4):
            raise InputError(f"scale {self.scale} / unshuffle {self.unshuffle}: unsupported")
        body_scale = self.scale * self.unshuffle
        if self.architecture == "rrdbnet" and body_scale not in (2, 4, 8):
            raise InputError(f"RRDBNet upsampling by {body_scale} (scale {self.scale} x unshuffle "
                             f"{self.unshuffle}): only 2, 4 and 8 are supported")

    @property
    def upsample_stages(self):
        """Nearest x2 + conv stages of an RRDBNet."""
        return int(math.log2(self.scale * self.unshuffle))

    @property
    def pad_multiple(self):
        """Input height and width must be multiples of this (the pixel-unshuffle factor)."""
        return self.unshuffle


class _Rearrange(keras.layers.Layer):
    """A layer that moves pixels between the spatial axes and the channels, ``factor`` in each direction."""

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="sd_keras")
class PixelShuffle(_Rearrange):
    """``(B, H, W, C*r*r) -> (B, r*H, r*W, C)`` with PyTorch's channel order (channel ``c*r*r + i*r + j`` goes to
    row offset ``i``, column offset ``j``), so converted weights keep their meaning."""

    def call(self, x):
        r = self.factor
        shape = ops.shape(x)
        height, width, channels = shape[1], shape[2], x.shape[-1] // (r * r)
        x = ops.reshape(x, (-1, height, width, channels, r, r))
        x = ops.transpose(x, (0, 1, 4, 2, 5, 3))
        return ops.reshape(x, (-1, height * r, width * r, channels))

    def compute_output_shape(self, input_shape):
        r = self.factor
        scaled = [None if size is None else size * r for size in input_shape[1:3]]
        return (input_shape[0], *scaled, input_shape[3] // (r * r))


@keras.saving.register_keras_serializable(package="sd_keras")
class PixelUnshuffle(_Rearrange):
    """The inverse of ``PixelShuffle``: ``(B, r*H, r*W, C) -> (B, H, W, C*r*r)``, PyTorch's channel order."""

    def call(self, x):
        r = self.factor
        shape = ops.shape(x)
        height, width, channels = shape[1] // r, shape[2] // r, x.shape[-1]
        x = ops.reshape(x, (-1, height, r, width, r, channels))
        x = ops.transpose(x, (0, 1, 3, 5, 2, 4))
        return ops.reshape(x, (-1, height, width, channels * r * r))

    def compute_output_shape(self, input_shape):
        r = self.factor
        scaled = [None if size is None else size // r for size in input_shape[1:3]]
        return (input_shape[0], *scaled, input_shape[3] * r * r)


def _conv(filters, name, dtype):
    return keras.layers.Conv2D(filters, 3, padding="same", dtype=dtype, name=name)


def _lrelu(x, name, dtype):
    return keras.layers.LeakyReLU(negative_slope=0.2, dtype=dtype, name=name)(x)


def _dense_block(x, config, name, dtype):
    """Residual dense block: five convolutions, each seeing the block input and all earlier outputs."""
    features = [x]
    for index in range(1, 5):
        inputs = features[0] if len(features) == 1 else keras.layers.Concatenate(dtype=dtype)(features)
        out = _conv(config.num_grow_ch, f"{name}_conv{index}", dtype)(inputs)
        features.append(_lrelu(out, f"{name}_lrelu{index}", dtype))
    out = _conv(config.num_feat, f"{name}_conv5", dtype)(keras.layers.Concatenate(dtype=dtype)(features))
    out = keras.layers.Rescaling(0.2, dtype=dtype, name=f"{name}_scale")(out)
    return keras.layers.Add(dtype=dtype, name=f"{name}_add")([out, x])


def build_rrdbnet(config, *, dtype=None, name="rrdbnet"):
    """The RRDBNet of ``config`` (``architecture="rrdbnet"``): ``image (B,H,W,3) -> (B,s*H,s*W,3)``."""
    image = keras.Input((None, None, config.in_channels), name="image")
    x = image
    if config.unshuffle > 1:
        x = PixelUnshuffle(config.unshuffle, dtype=dtype, name="unshuffle")(x)
    feat = _conv(config.num_feat, "conv_first", dtype)(x)
    body = feat
    for block in range(config.num_block):
        block_input = body
        for dense in range(1, 4):
            body = _dense_block(body, config, f"body_{block}_rdb{dense}", dtype)
        body = keras.layers.Rescaling(0.2, dtype=dtype, name=f"body_{block}_scale")(body)
        body = keras.layers.Add(dtype=dtype, name=f"body_{block}_add")([body, block_input])
    body = _conv(config.num_feat, "conv_body", dtype)(body)
    x = keras.layers.Add(dtype=dtype, name="body_skip")([feat, body])
    for stage in range(1, config.upsample_stages + 1):
        x = keras.layers.UpSampling2D(2, interpolation="nearest", dtype=dtype, name=f"upsample{stage}")(x)
        x = _lrelu(_conv(config.num_feat, f"conv_up{stage}", dtype)(x), f"lrelu_up{stage}", dtype)
    x = _lrelu(_conv(config.num_feat, "conv_hr", dtype)(x), "lrelu_hr", dtype)
    x = _conv(config.out_channels, "conv_last", dtype)(x)
    return keras.Model(image, x, name=name)


def build_srvgg(config, *, dtype=None, name="srvgg"):
    """The SRVGGNetCompact of ``config`` (``architecture="srvgg"``): ``image (B,H,W,3) -> (B,s*H,s*W,3)``."""
    image = keras.Input((None, None, config.in_channels), name="image")
    x = image
    index = 0
    for _ in range(config.num_conv + 1):
        x = _conv(config.num_feat, f"body_{index}", dtype)(x)
        x = keras.layers.PReLU(shared_axes=[1, 2], dtype=dtype, name=f"body_{index + 1}")(x)
        index += 2
    x = _conv(config.out_channels * config.scale ** 2, f"body_{index}", dtype)(x)
    x = PixelShuffle(config.scale, dtype=dtype, name="pixel_shuffle")(x)
    base = keras.layers.UpSampling2D(config.scale, interpolation="nearest", dtype=dtype, name="base")(image)
    x = keras.layers.Add(dtype=dtype, name="add_base")([x, base])
    return keras.Model(image, x, name=name)


def build_upscaler(config, *, dtype=None, name=None):
    """Build the model ``config.architecture`` names (weights random until a loader fills them)."""
    builder = build_rrdbnet if config.architecture == "rrdbnet" else build_srvgg
    return builder(config, dtype=dtype, name=name or config.architecture)
