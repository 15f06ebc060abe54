"""Images in and out of the HTTP API: base64 PNG with the A1111 ``parameters`` chunk, checked input decoding.

Output images are raw base64 (no ``data:`` prefix), as A1111 sends them. Input images may be raw base64 or a
``data:image/...;base64,`` URL; URLs to fetch are refused (the server never reaches out on a client's behalf).

Example:
    >>> import numpy as np
    >>> text = encode_png(np.zeros((8, 8, 3), np.uint8), "a cat\\nSteps: 2")
    >>> decode_image(text, "image").size
    (8, 8)
"""

import base64
import binascii
import io

from sd_keras.image_file import MAX_TEXT_BYTES, ImageFileError, open_image

MAX_IMAGE_SIDE = 2048
# A client-supplied image that cannot be used; the message names the field
ImageInputError = ImageFileError


def encode_png(image, parameters=None):
    """uint8 (H, W, 3) array → base64 PNG text, with the ``parameters`` text chunk when given."""
    from PIL import Image, PngImagePlugin

    info = None
    if parameters is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_base64(text, field):
    """Raw base64 or a ``data:`` URL → bytes; ImageInputError naming ``field`` otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ImageInputError(f"{field}: expected a base64-encoded image, got an empty value")
    text = text.strip()
    if text.startswith(("http://", "https://")):
        raise ImageInputError(f"{field}: image URLs are not fetched; send the image as base64")
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise ImageInputError(f"{field}: a data URL must be base64-encoded (data:image/png;base64,...)")
    try:
        # whitespace (line-wrapped base64) is allowed; anything else outside the alphabet is an error
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(f"{field}: not valid base64") from None


def _open_checked(data, field, max_side):
    # the size comes from the header and is checked before any pixel is decoded
    return open_image(io.BytesIO(data), field, max_side=max_side, max_text_bytes=MAX_TEXT_BYTES)


def decode_image(text, field, *, max_side=MAX_IMAGE_SIDE):
    """Base64 (or data URL) → RGB or L PIL image, refusing non-images, sides over ``max_side`` and text chunks
    over 1 MB in all.

    The size is read from the header before any pixel is decoded, so an oversized image costs no memory.
    """
    image = _open_checked(decode_base64(text, field), field, max_side)
    return image if image.mode in ("RGB", "L") else image.convert("RGB")


def image_text_chunks(text, field="image", *, max_side=MAX_IMAGE_SIDE):
    """The text chunks (``{"parameters": ..., ...}``) of a base64 image; ImageInputError if unreadable."""
    image = _open_checked(decode_base64(text, field), field, max_side)
    chunks = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    chunks.update(getattr(image, "text", None) or {})
    return chunks
