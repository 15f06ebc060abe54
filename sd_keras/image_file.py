"""Opening image files and uploads that may be hostile: size checked from the header, text chunks bounded.

``PIL.Image.open`` raises ``DecompressionBombError`` (or warns) for a huge header before a caller can check the
size itself, and a PNG may carry megabytes of compressed text. ``open_image`` reads the header with the format's
own PIL reader, refuses an image over the pixel limit before any pixel is decoded, decodes it, and refuses text
chunks that add up to more than ``max_text_bytes``. Every refusal is an ``ImageFileError`` (an ``InputError``)
whose message starts with the name of what was read (a field or a path).

Example:
    >>> import io
    >>> from PIL import Image
    >>> buffer = io.BytesIO()
    >>> Image.new("RGB", (8, 4)).save(buffer, format="PNG")
    >>> open_image(io.BytesIO(buffer.getvalue()), "upload", max_side=64).size
    (8, 4)
"""

import os
import struct

from sd_keras.errors import InputError

MAX_TEXT_BYTES = 2**20  # all text chunks of one image together
_PIL_LIMIT = object()


class ImageFileError(InputError):
    """An image that cannot be used (an ``InputError``); the message names the field or file."""


def _read_header(fp, name):
    """The PIL image for ``fp`` with only its header read; ``Image.open`` without PIL's decompression-bomb check
    (the caller checks the size against its own limit instead)."""
    from PIL import Image

    prefix = fp.read(16)
    for register in (Image.preinit, Image.init):
        register()
        for image_format in list(Image.ID):
            factory, accept = Image.OPEN[image_format]
            verdict = accept(prefix) if accept else True
            if not verdict or isinstance(verdict, str):  # a str is PIL's "this format, but unsupported" note
                continue
            fp.seek(0)
            try:
                return factory(fp, "")
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue  # not this format after all
    raise ImageFileError(f"{name}: cannot read image: not in a format PIL reads (PNG, JPEG, WebP, ...)")


def _text_bytes(image):
    texts = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    texts.update(getattr(image, "text", None) or {})  # PNG: tEXt, zTXt and iTXt chunks, also after the pixels
    return sum(len(value) for value in texts.values())


def _text_chunk_error(name):
    from PIL import PngImagePlugin

    # PIL refuses a compressed text chunk that inflates past PngImagePlugin.MAX_TEXT_CHUNK (1 MB by default)
    return ImageFileError(f"{name}: a text chunk is larger than the limit of {PngImagePlugin.MAX_TEXT_CHUNK} bytes")


def _check_size(image, name, max_side, max_pixels):
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageFileError(f"{name}: image is {width}x{height}; it has no pixels")
    if max_side is not None and (width > max_side or height > max_side):
        raise ImageFileError(f"{name}: image is {width}x{height}; the limit is {max_side}x{max_side} pixels "
                             f"(each side at most {max_side})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageFileError(f"{name}: image is {width}x{height} = {width * height} pixels; the limit is "
                             f"{max_pixels} pixels")


def _open(fp, name, max_side, max_pixels, max_text_bytes):
    from PIL import Image

    try:
        image = _read_header(fp, name)
    except ImageFileError:
        raise
    except (OSError, ValueError) as error:
        if "MAX_TEXT" in str(error):
            raise _text_chunk_error(name) from None
        raise ImageFileError(f"{name}: cannot read image: the header is damaged ({error})") from None
    _check_size(image, name, max_side, max_pixels)
    try:
        image.load()  # also reads the text chunks after the pixel data
    except ValueError as error:
        if "MAX_TEXT" in str(error):
            raise _text_chunk_error(name) from None
        raise ImageFileError(f"{name}: the image data is damaged ({error})") from None
    except (OSError, EOFError, SyntaxError, Image.DecompressionBombError) as error:
        # a frame or tile inside the image larger than its header said counts as damage
        raise ImageFileError(f"{name}: the image data is damaged ({error})") from None
    text_bytes = _text_bytes(image)
    if max_text_bytes is not None and text_bytes > max_text_bytes:
        raise ImageFileError(f"{name}: its text chunks hold {text_bytes} characters; the limit is {max_text_bytes}")
    return image


def open_image(source, name=None, *, max_side=None, max_pixels=_PIL_LIMIT, max_text_bytes=MAX_TEXT_BYTES):
    """A decoded PIL image from a path or binary file object, checked before its pixels are decoded.

    Args:
        source: a path (str, bytes, os.PathLike) or a binary file object (e.g. ``io.BytesIO``).
        name: what to call it in errors (a request field, a path); defaults to the path or "image".
        max_side: refuse images with a side over this many pixels (None: no side limit).
        max_pixels: refuse images with more pixels; default ``PIL.Image.MAX_IMAGE_PIXELS`` (None: no limit).
        max_text_bytes: refuse images whose text chunks (``parameters``, comments...) add up to more.

    Raises:
        ImageFileError: unreadable, damaged, too large, or too much text; the message starts with ``name``.
    """
    from PIL import Image

    if max_pixels is _PIL_LIMIT:
        max_pixels = Image.MAX_IMAGE_PIXELS
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        path = os.fsdecode(source)
        name = name or path
        try:
            with open(path, "rb") as fp:
                return _open(fp, name, max_side, max_pixels, max_text_bytes)
        except OSError as error:
            raise ImageFileError(f"{name}: cannot read image file ({error.strerror or error})") from None
    return _open(source, name or "image", max_side, max_pixels, max_text_bytes)
