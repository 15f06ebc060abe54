"""Images in and out of a generation: output path patterns and a titled grid for notebooks and reports.

Example:
    >>> import numpy as np
    >>> from sd_keras.images import image_grid, output_paths
    >>> image_grid(np.zeros((4, 64, 64, 3), np.uint8), columns=2).size
    (140, 140)
    >>> output_paths("out_%d.png", 2)
    ['out_0.png', 'out_1.png']
"""

import math
import os
import textwrap

import numpy as np

from sd_keras.errors import InputError


def output_paths(pattern, count):
    """The file names for ``count`` images: ``%d`` in ``pattern`` is replaced by the image index; without it, one
    image is written to ``pattern`` and several to ``<stem>_<index><ext>`` (as ``sd-keras generate -o`` does)."""
    pattern = os.fspath(pattern)
    if not isinstance(pattern, str) or not pattern:
        raise InputError(f"path_pattern must be a non-empty path, got {pattern!r}")
    if "%" in pattern:
        try:
            paths = [pattern % index for index in range(count)]
        except (TypeError, ValueError) as error:
            raise InputError(f"path_pattern {pattern!r} must hold one %d for the image index ({error})") from None
        if count > 1 and len(set(paths)) < count:
            raise InputError(f"path_pattern {pattern!r} gives the same file name to several images")
        return paths
    if count == 1:
        return [pattern]
    stem, ext = os.path.splitext(pattern)
    return [f"{stem}_{index}{ext or '.png'}" for index in range(count)]


def _as_rgb(image, index):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InputError(f"image {index} must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
            raise InputError(f"image {index} must hold finite numbers, got dtype {array.dtype}")
        # floats in [0, 1] (masks) are scaled to 0-255; anything else is clipped to it
        scale = 255.0 if np.issubdtype(array.dtype, np.floating) and array.size and array.max() <= 1.0 else 1.0
        array = np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def image_grid(images, titles=None, *, columns=None, scale=1, padding=4, background=(255, 255, 255)):
    """One PIL image holding ``images`` in rows of ``columns`` (default: all in one row), each under its title.

    ``images``: a uint8 array (B, H, W, 3) as ``text_to_image`` returns, or a list of arrays ((H, W) masks
    included) or PIL images. ``titles``: one string per image (``\\n`` starts a new line; long lines wrap to the
    image width). ``scale``: an integer factor that enlarges each image (nearest neighbour, so pixels stay sharp).
    In a notebook, ``display(image_grid(...))`` shows it; ``.save("grid.png")`` writes it.
    """
    from PIL import Image, ImageDraw, ImageFont

    images = [_as_rgb(image, index) for index, image in enumerate(list(images))]
    if not images:
        raise InputError("image_grid needs at least one image")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise InputError(f"scale must be an integer >= 1, got {scale!r}")
    columns = len(images) if columns is None else columns
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise InputError(f"columns must be an integer >= 1, got {columns!r}")
    if titles is not None:
        titles = [str(title) for title in titles]
        if len(titles) != len(images):
            raise InputError(f"got {len(titles)} titles for {len(images)} images")
    if scale > 1:
        images = [image.resize((image.width * scale, image.height * scale), Image.NEAREST) for image in images]
    cell_width = max(image.width for image in images)
    cell_height = max(image.height for image in images)
    font = ImageFont.load_default()
    line_height = font.getbbox("Ag")[3] + 2
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    char_width = max(1, font.getbbox(alphabet)[2] // len(alphabet))
    wrapped = []
    for title in titles or []:
        lines = [part for line in title.split("\n")
                 for part in (textwrap.wrap(line, max(4, cell_width // char_width)) or [""])]
        wrapped.append(lines)
    title_height = max((len(lines) for lines in wrapped), default=0) * line_height
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    step_x, step_y = cell_width + padding, cell_height + title_height + padding
    grid = Image.new("RGB", (columns * step_x + padding, rows * step_y + padding), background)
    draw = ImageDraw.Draw(grid)
    for index, image in enumerate(images):
        left = padding + (index % columns) * step_x
        top = padding + (index // columns) * step_y
        for number, line in enumerate(wrapped[index] if wrapped else []):
            draw.text((left, top + number * line_height), line, fill=(0, 0, 0), font=font)
        grid.paste(image, (left, top + title_height))
    return grid
