"""Upscale images with an AI upscaler (ESRGAN / Real-ESRGAN RRDBNet, SRVGGNetCompact) or a plain resampler.

``upscale(image, model, scale, tile=..., overlap=...)`` runs ``model`` (a Keras upscaler from
``sd_keras.weights.upscalers.load_upscaler``, a path to an upscaler file, or a built-in name: ``"Lanczos"``,
``"Nearest"``) on uint8 RGB images and resizes the result to ``scale`` times the input with Lanczos when the
model's own factor differs (a x4 model asked for x2 runs at x4, then downsizes, as AUTOMATIC1111 does). AI
upscalers run tile by tile (``sd_keras.tiling``: tiles of one size, so the model compiles once; overlapping
tiles blended with feathered weights), so memory is bounded by the tile size, not the image: RRDBNet (64
features) at the default 192-pixel tiles needs about 1.5 GB of activations for the last x2 stage of one tile
whatever the image size; the output canvas of a 2048x2048 result is 64 MB.

``Upscalers(folder)`` names the upscalers a front end offers: the built-ins plus every ``.pth`` / ``.safetensors``
file of ``folder`` under its file name without the extension (models load once, on first use).

Example:
    >>> import numpy as np
    >>> image = np.zeros((16, 24, 3), np.uint8)
    >>> upscale(image, "Lanczos", 2).shape
    (32, 48, 3)
"""

import os
import threading

from sd_keras import files
from sd_keras.errors import InputError

BUILTIN = ("Lanczos", "Nearest")
NONE = "None"  # A1111's name for "no upscaler"
DEFAULT_TILE = 192
DEFAULT_OVERLAP = 32
MAX_SCALE = 8

__all__ = ["upscale", "Upscalers", "upscaler_scale", "postprocessing_info", "save_png", "BUILTIN",
           "DEFAULT_TILE", "DEFAULT_OVERLAP"]


def _as_batch(image):
    import numpy as np

    array = np.asarray(image)
    single = array.ndim == 3
    if single:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise InputError(f"image: expected uint8 RGB (height, width, 3) or (batch, height, width, 3), got "
                         f"{array.dtype} {array.shape}")
    if min(array.shape[1:3]) < 1:
        raise InputError(f"image: empty ({array.shape[1]}x{array.shape[2]})")
    return array, single


def _check_scale(scale):
    import numpy as np

    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise InputError(f"scale {scale!r}: not a number") from None
    if not 0 < scale <= MAX_SCALE or not np.isfinite(scale):
        raise InputError(f"scale {scale:g}: must be above 0 and at most {MAX_SCALE}")
    return scale


def _resize(batch, size, name):
    import numpy as np
    from PIL import Image

    method = Image.Resampling.LANCZOS if name == "Lanczos" else Image.Resampling.NEAREST
    width, height = size
    if batch.shape[1:3] == (height, width):
        return batch
    return np.stack([np.asarray(Image.fromarray(image).resize((width, height), method)) for image in batch])


def upscaler_scale(model):
    """The factor a Keras upscaler model enlarges by (None for a built-in name)."""
    config = getattr(model, "upscaler_config", None)
    return None if config is None else config.scale


def _run_model(model, batch, tile, overlap):
    """The model's own output, uint8 at its scale: padded by reflection to its input multiple, tiled, cropped."""
    import numpy as np

    from sd_keras import tiling

    config = model.upscaler_config
    multiple = config.pad_multiple
    _, height, width, _ = batch.shape
    pad_h, pad_w = -height % multiple, -width % multiple
    pixels = batch.astype(np.float32) / 255.0
    if pad_h or pad_w:
        if min(height, width) < 2:
            raise InputError(f"image {height}x{width}: too small for this {config.unshuffle}x-folded model")
        pixels = np.pad(pixels, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
    if tile:
        tile = max(multiple, tile // multiple * multiple)
        overlap = min(overlap // multiple * multiple, tile - multiple)
        out = tiling.tiled_apply(model.predict_on_batch, pixels, config.scale, tile=tile, overlap=overlap,
                                 align=multiple)
    else:
        out = np.asarray(model.predict_on_batch(pixels), np.float32)
    out = out[:, :height * config.scale, :width * config.scale]
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def upscale(image, model, scale=None, *, tile=DEFAULT_TILE, overlap=DEFAULT_OVERLAP, size=None):
    """Upscale uint8 RGB ``image`` ((H, W, 3) or (B, H, W, 3)); returns uint8 of the same rank.

    Args:
        image: uint8 RGB array.
        model: a Keras upscaler (``load_upscaler``), a path to an upscaler file, or ``"Lanczos"`` / ``"Nearest"``.
        scale: output size / input size (default: the model's factor; 4 for a built-in). The result is
            ``round(H*scale) x round(W*scale)``; a model whose factor differs runs at its factor, then Lanczos
            resizes.
        tile: tile size in input pixels for AI upscalers (0 or None: the whole image at once).
        overlap: input pixels shared by neighbouring tiles.
        size: ``(width, height)`` of the result instead of ``scale`` (A1111's "scale to").

    Raises:
        InputError: a bad image, scale, size or tile setting, or an unreadable model file.
    """
    import numpy as np

    batch, single = _as_batch(image)
    if isinstance(model, (str, os.PathLike)) and os.fspath(model) not in BUILTIN:
        from sd_keras.weights.upscalers import load_upscaler

        model = load_upscaler(model)
    native = upscaler_scale(model) if not isinstance(model, str) else None
    if not isinstance(model, str) and native is None:
        raise InputError("model: not an upscaler (load one with sd_keras.weights.upscalers.load_upscaler)")
    _, height, width, _ = batch.shape
    if size is not None:
        width_out, height_out = (int(value) for value in size)
        if not (0 < width_out <= MAX_SCALE * width and 0 < height_out <= MAX_SCALE * height):
            raise InputError(f"size {width_out}x{height_out}: must be positive and at most {MAX_SCALE} times "
                             f"the {width}x{height} input")
    else:
        scale = _check_scale(native or 4 if scale is None else scale)
        width_out, height_out = max(1, round(width * scale)), max(1, round(height * scale))
    if tile and (int(tile) != tile or tile < 8 or not 0 <= overlap < tile):
        raise InputError(f"tile {tile} / overlap {overlap}: the tile must be at least 8 pixels and the overlap "
                         "from 0 to tile - 1")
    if isinstance(model, str):
        out = batch
    else:
        out = _run_model(model, batch, int(tile or 0), int(overlap))
    out = _resize(out, (width_out, height_out), model if isinstance(model, str) else "Lanczos")
    return out[0] if single else out


class Upscalers:
    """The upscalers a front end offers: ``BUILTIN`` plus the upscaler files of ``folder`` (may be None).

    ``names()`` lists them (``"None"`` first when ``with_none``), ``get(name)`` returns a built-in name or the
    loaded Keras model (loaded once; thread-safe), ``path(name)`` the file, ``scale(name)`` its factor.
    """

    def __init__(self, folder=None):
        from sd_keras.weights.upscalers import SUFFIXES

        self.folder = folder
        self._files = {}
        if folder is not None:
            if not os.path.isdir(folder):
                raise InputError(f"upscalers folder {folder}: not a folder")
            for entry in sorted(os.listdir(folder)):
                stem, extension = os.path.splitext(entry)
                full = os.path.join(folder, entry)
                if extension.lower() in SUFFIXES and os.path.isfile(full) and stem not in BUILTIN:
                    self._files.setdefault(stem, full)
        self._models = {}
        self._lock = threading.Lock()

    def names(self, with_none=False):
        return ([NONE] if with_none else []) + list(BUILTIN) + list(self._files)

    def path(self, name):
        return self._files.get(name)

    def scale(self, name):
        """The factor ``name`` enlarges by, read from the file's shapes (None for a built-in or an unreadable
        file, which ``get`` reports)."""
        if name not in self._files:
            return None
        from sd_keras.weights.upscalers import describe_upscaler

        try:
            return describe_upscaler(self._files[name]).scale
        except InputError:
            return None

    def get(self, name):
        if name in BUILTIN:
            return name
        if name not in self._files:
            raise InputError(f"upscaler {name!r}: unknown; available: {', '.join(self.names())}")
        with self._lock:
            if name not in self._models:
                from sd_keras.weights.upscalers import load_upscaler

                self._models[name] = load_upscaler(self._files[name])
            return self._models[name]


def postprocessing_info(upscaler_name, scale=None, size=None):
    """A1111's ``postprocessing`` PNG text: ``Postprocess upscale by: 4, Postprocess upscaler: <name>`` (or
    ``Postprocess upscale to: WxH``)."""
    what = f"Postprocess upscale to: {size[0]}x{size[1]}" if size else f"Postprocess upscale by: {scale:g}"
    return f"{what}, Postprocess upscaler: {upscaler_name}"


def save_png(image, path, texts):
    """Write uint8 ``image`` as a PNG with the text chunks ``texts`` ({keyword: text}), atomically."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        info.add_text(key, value)
    with files.atomic_write(path) as handle:
        Image.fromarray(image).save(handle, format="PNG", pnginfo=info)
