"""AUTOMATIC1111-style generation parameters: the PNG ``parameters`` text chunk, written and parsed.

The text is::

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x512, Model: shapes

The negative-prompt line is left out when there is none. Values that contain ``,`` ``:`` or quotes are written
as JSON strings, as A1111 does.
"""

import json
import re

from sd_keras import files

_KEY_VALUE = re.compile(r'\s*([\w \-/+]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _format_value(value):
    if isinstance(value, float):
        value = f"{value:g}"
    text = str(value)
    if any(c in text for c in ',:"\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


def format_parameters(prompt, negative_prompt=None, **settings):
    """The ``parameters`` text for a generation; ``settings`` keys use A1111's names, e.g.
    ``format_parameters("a cat", Steps=20, Sampler="Euler a", **{"CFG scale": 7, "Seed": 1})``."""
    lines = [prompt or ""]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {_format_value(value)}" for key, value in settings.items() if value is not None))
    return "\n".join(lines)


def _parse_value(text):
    text = text.strip()
    if text.startswith('"'):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text.strip('"')
    return text


def parse_parameters(text):
    """Parse A1111 ``parameters`` text into ``{"prompt", "negative_prompt", <settings>...}`` (values as str)."""
    lines = text.strip("\n").split("\n")
    # A1111's rule: the last line holds the settings when it reads as at least three "key: value" pairs;
    # ours always start with "Steps:"
    last = lines[-1] if len(lines) > 1 else ""
    settings_line = lines.pop() if last.startswith("Steps: ") or len(_KEY_VALUE.findall(last)) >= 3 else ""
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    result = {"prompt": "\n".join(prompt_lines).strip(), "negative_prompt": "\n".join(negative_lines).strip()}
    for key, value in _KEY_VALUE.findall(settings_line):
        result[key.strip()] = _parse_value(value)
    return result


def save_png(image, path, parameters):
    """Write uint8 (H, W, 3) ``image`` to ``path`` with the ``parameters`` chunk, atomically."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    with files.atomic_write(path) as handle:
        Image.fromarray(image).save(handle, format="PNG", pnginfo=info)


def read_parameters(path_or_file):
    """The ``parameters`` text of a PNG, or None when it has none.

    ValueError (naming the file) if it is not a readable image, is larger than PIL's pixel limit
    (``PIL.Image.MAX_IMAGE_PIXELS``; checked from the header, before decoding) or holds more than 1 MB of text.
    """
    from sd_keras.image_file import open_image

    name = path_or_file if isinstance(path_or_file, str) else None
    with open_image(path_or_file, name) as image:
        return image.info.get("parameters") or getattr(image, "text", {}).get("parameters")
