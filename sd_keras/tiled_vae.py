"""Tiled VAE: decode latents and encode images tile by tile, so large images fit in little memory.

The VAE decoder's activations grow with the image (SD 1.x at 2048x2048: several GB in float32); run on tiles of
one size, the decoder compiles once (one compiled program of the tile's shape, reused for every tile) and holds
only one tile's activations. Tiles overlap and are blended with ``sd_keras.tiling``'s feathered weights.

The result is approximate: the decoder's receptive field is wide (its middle block's self-attention and every
GroupNorm see the whole input), so a tile does not see what the whole image would give it. The default overlap is
generous (half a tile) to keep the difference small; ``tests/test_tiled_vae.py`` measures and bounds it on the
``shapes`` model (see the README's table for the numbers).

``Generator.tiled_vae`` selects it: ``True`` (always), ``False`` (never), ``None`` (the default: automatic, tiled
when the image has more than ``AUTO_PIXELS`` pixels, i.e. above 1024x1024, where untiled decoding of SD 1.x
starts to need several GB).

Example:
    >>> import numpy as np
    >>> upsample = lambda z: np.repeat(np.repeat(z[..., :3], 8, axis=1), 8, axis=2)
    >>> latent = np.random.default_rng(0).random((1, 24, 40, 4), dtype=np.float32)
    >>> out = decode_tiled(upsample, latent, tile=16, overlap=8)
    >>> out.shape, bool(np.abs(out - upsample(latent)).max() < 1e-6)
    ((1, 192, 320, 3), True)
"""

import fractions

import numpy as np

from sd_keras import tiling
from sd_keras.errors import InputError

DECODE_TILE = 64  # latent pixels (512 image pixels)
DECODE_OVERLAP = 32  # latent pixels (256 image pixels)
ENCODE_TILE = 512  # image pixels
ENCODE_OVERLAP = 256  # image pixels
AUTO_PIXELS = 1024 * 1024  # automatic tiling above this many image pixels

__all__ = ["decode_tiled", "encode_tiled", "use_tiles", "DECODE_TILE", "DECODE_OVERLAP", "ENCODE_TILE",
           "ENCODE_OVERLAP", "AUTO_PIXELS"]


def check_setting(tiled):
    """InputError unless ``tiled`` is True, False or None."""
    if tiled is not None and not isinstance(tiled, (bool, np.bool_)):
        raise InputError(f"tiled_vae must be True, False or None (automatic), got {tiled!r}")
    return None if tiled is None else bool(tiled)


def use_tiles(tiled, height, width):
    """Whether an image of ``height`` x ``width`` pixels goes through the VAE in tiles with setting ``tiled``."""
    tiled = check_setting(tiled)
    return height * width > AUTO_PIXELS if tiled is None else tiled


def decode_tiled(decode, latent, *, tile=None, overlap=None):
    """``decode`` ((B, h, w, c) latents → (B, 8h, 8w, 3)) run on ``tile`` x ``tile`` latent tiles overlapping by
    ``overlap`` latent pixels (default: ``DECODE_TILE``, ``DECODE_OVERLAP``), blended; float32 (B, 8h, 8w, 3)."""
    tile, overlap = tile or DECODE_TILE, DECODE_OVERLAP if overlap is None else overlap
    return tiling.tiled_apply(decode, np.asarray(latent, np.float32), 8, tile=tile, overlap=overlap)


def encode_tiled(encode, pixels, *, tile=None, overlap=None):
    """``encode`` ((1, H, W, 3) pixels in [-1, 1] → (1, H/8, W/8, c)) run on ``tile`` x ``tile`` pixel tiles
    (multiples of 8) overlapping by ``overlap`` pixels (default: ``ENCODE_TILE``, ``ENCODE_OVERLAP``), blended;
    float32 (1, H/8, W/8, c)."""
    tile, overlap = tile or ENCODE_TILE, ENCODE_OVERLAP if overlap is None else overlap
    return tiling.tiled_apply(encode, np.asarray(pixels, np.float32), fractions.Fraction(1, 8), tile=tile,
                              overlap=overlap, align=8)
