"""Run an image-to-image function tile by tile and blend the tiles' outputs with feathered weights.

``tiled_apply(fn, image, scale, tile=..., overlap=...)`` covers ``image`` (``(B, H, W, C)``, NHWC) with tiles of
one size (so a compiled ``fn`` compiles once), runs ``fn`` on each and adds the outputs into one canvas with
per-pixel weights, then divides by the summed weights. ``fn`` maps ``(B, h, w, C)`` to
``(B, h*scale, w*scale, C')`` for a fixed ``scale``: an integer (upscalers: 2, 4; the VAE decoder: 8) or a
``fractions.Fraction`` below one (the VAE encoder: ``Fraction(1, 8)``), in which case tile starts, the tile size
and the overlap are multiples of its denominator.

The tile grid along one axis (``tile_starts``): ``n = ceil((length - overlap) / (tile - overlap))`` tiles with
starts ``round(i * (length - tile) / (n - 1))`` (rounded down to a multiple of ``align``), evenly spread, the
first at 0 and the last ending at ``length``; neighbours share at least ``overlap`` pixels. When ``length <=
tile`` there is one tile, of size ``length``.

The weights along one axis (``feather_weights``), in output pixels: inside the part a tile shares with its
neighbour (``shared`` pixels on that side), a tile's weight is 0 over the outer quarter of the shared part
(where a convolution's zero padding at the tile's edge has changed its output), rises linearly over the middle
half and is 1 beyond; image borders are not feathered. The 2-D weight is the product of the two axes' weights,
so the blend is exact where one tile's result is exact and seamless elsewhere. A model whose receptive field
reaches less than a quarter of the overlap (in input pixels) gives the untiled result exactly; a wider one
differs only a little, in the middle of the shared bands (``tests/test_upscalers.py`` measures it).

Memory: only one tile's activations exist at a time; the canvas is ``B x H*scale x W*scale x C'`` float32 plus
one float32 weight plane (a 2048x2048 RGB output: 48 MB + 16 MB). The Kotlin port in the Android core
(``Tiling.kt``) implements ``tile_starts`` and ``feather_weights`` with the same rules and golden values.

Example:
    >>> import numpy as np
    >>> tile_starts(100, tile=40, overlap=8)
    [0, 30, 60]
    >>> image = np.random.default_rng(0).random((1, 50, 70, 3), dtype=np.float32)
    >>> double = lambda x: np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
    >>> out = tiled_apply(double, image, 2, tile=32, overlap=8)
    >>> out.shape, bool(np.abs(out - double(image)).max() < 1e-6)
    ((1, 100, 140, 3), True)
"""

import fractions
import math

import numpy as np

from sd_keras.errors import InputError

__all__ = ["tile_starts", "feather_weights", "tiled_apply", "tile_count"]


def _check_sizes(tile, overlap, align):
    if int(align) != align or align < 1:
        raise InputError(f"align {align}: must be a positive integer")
    if int(tile) != tile or tile < 1 or tile % align:
        raise InputError(f"tile {tile}: must be a positive integer and a multiple of {align}")
    if int(overlap) != overlap or not 0 <= overlap < tile or overlap % align:
        raise InputError(f"overlap {overlap}: must be an integer from 0 to tile - 1 ({tile - 1}) and a multiple "
                         f"of {align}")


def tile_starts(length, tile, overlap, align=1):
    """Starts of the tiles covering ``length`` pixels (see the module docstring); all tiles have size
    ``min(tile, length)``. ``length`` must be a multiple of ``align`` when it is longer than ``tile``."""
    _check_sizes(tile, overlap, align)
    if length <= tile:
        return [0]
    if length % align:
        raise InputError(f"length {length}: must be a multiple of {align} to be tiled")
    count = math.ceil((length - overlap) / (tile - overlap))
    span = length - tile
    return [(i * span // (count - 1)) // align * align if i < count - 1 else span for i in range(count)]


def tile_count(height, width, tile, overlap, align=1):
    """How many tiles ``tiled_apply`` runs for an image of this size."""
    return len(tile_starts(height, tile, overlap, align)) * len(tile_starts(width, tile, overlap, align))


def feather_weights(size, shared_before, shared_after):
    """Weights (float32, ``size``) of one tile along one axis, in output pixels: ``shared_before`` /
    ``shared_after`` pixels are shared with the previous / next tile (0 at an image border)."""
    weights = np.ones(size, np.float32)
    position = np.arange(size, dtype=np.float32) + 0.5
    for shared, distance in ((shared_before, position), (shared_after, size - position)):
        if shared > 0:
            # 0 over the outer quarter of the shared band, linear over the middle half, 1 beyond
            ramp = np.clip((distance - shared / 4) / (shared / 2), 0.0, 1.0)
            weights = np.minimum(weights, ramp)
    return weights


def _axis_weights(starts, size, scale):
    """Per-tile output weights along one axis."""
    out = []
    for index, start in enumerate(starts):
        before = (starts[index - 1] + size - start) if index > 0 else 0
        after = (start + size - starts[index + 1]) if index + 1 < len(starts) else 0
        out.append(feather_weights(int(size * scale), int(before * scale), int(after * scale)))
    return out


def tiled_apply(fn, image, scale, *, tile=256, overlap=32, align=None):
    """``fn`` applied to ``image`` tile by tile, blended (float32 numpy, ``(B, H*scale, W*scale, C')``).

    Args:
        fn: ``(B, h, w, C) -> (B, h*scale, w*scale, C')`` (numpy or backend arrays; converted with
            ``np.asarray``).
        image: ``(B, H, W, C)`` array.
        scale: output size / input size (int, or a ``fractions.Fraction`` such as ``Fraction(1, 8)``).
        tile: tile size in input pixels (height and width); the image is one tile along an axis no longer.
        overlap: input pixels neighbouring tiles share (at least; even spreading can make it more).
        align: tile starts are multiples of this (default: the denominator of ``scale``).

    Raises:
        InputError: a non-4-D image, a scale that does not map the tiles to whole output pixels, or tile sizes
            outside their ranges.
    """
    image = np.asarray(image)
    if image.ndim != 4:
        raise InputError(f"image: expected (batch, height, width, channels), got shape {image.shape}")
    scale = fractions.Fraction(scale)
    if scale <= 0:
        raise InputError(f"scale {scale}: must be positive")
    align = align or scale.denominator
    if align % scale.denominator:
        raise InputError(f"align {align}: must be a multiple of the scale's denominator {scale.denominator}")
    _, height, width, _ = image.shape
    if (height * scale).denominator != 1 or (width * scale).denominator != 1:
        raise InputError(f"image {height}x{width}: scale {scale} does not give whole output pixels")
    rows, cols = tile_starts(height, tile, overlap, align), tile_starts(width, tile, overlap, align)
    tile_h, tile_w = min(tile, height), min(tile, width)
    row_weights, col_weights = _axis_weights(rows, tile_h, scale), _axis_weights(cols, tile_w, scale)
    out_h, out_w = int(tile_h * scale), int(tile_w * scale)
    canvas = total = None
    for row, row_weight in zip(rows, row_weights):
        for col, col_weight in zip(cols, col_weights):
            piece = np.asarray(fn(image[:, row:row + tile_h, col:col + tile_w]), dtype=np.float32)
            if piece.shape[1:3] != (out_h, out_w):
                raise InputError(f"fn: a {tile_h}x{tile_w} tile gave {piece.shape[1]}x{piece.shape[2]}, not "
                                 f"{out_h}x{out_w} (scale {scale})")
            if canvas is None:
                canvas = np.zeros((piece.shape[0], int(height * scale), int(width * scale), piece.shape[3]),
                                  np.float32)
                total = np.zeros(canvas.shape[1:3], np.float32)
            weight = np.outer(row_weight, col_weight)
            top, left = int(row * scale), int(col * scale)
            canvas[:, top:top + out_h, left:left + out_w] += piece * weight[None, :, :, None]
            total[top:top + out_h, left:left + out_w] += weight
    return canvas / total[None, :, :, None]
