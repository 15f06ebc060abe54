import numpy as np
import pytest

from sd_keras import metadata


def test_roundtrip_through_png(tmp_path):
    text = metadata.format_parameters(
        "a red circle, on a blue background", "blurry", Steps=20, Sampler="Euler a", **{"CFG scale": 7.0},
        Seed=123, Size="512x512", Model="shapes")
    assert text == ("a red circle, on a blue background\nNegative prompt: blurry\n"
                    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x512, Model: shapes")
    path = tmp_path / "out.png"
    metadata.save_png(np.zeros((8, 8, 3), np.uint8), str(path), text)
    assert metadata.read_parameters(str(path)) == text
    parsed = metadata.parse_parameters(text)
    assert parsed["prompt"] == "a red circle, on a blue background"
    assert parsed["negative_prompt"] == "blurry"
    assert parsed["Sampler"] == "Euler a" and parsed["Seed"] == "123" and parsed["CFG scale"] == "7"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary left behind


def test_quoted_values_and_multiline_prompt():
    text = metadata.format_parameters("line one\nline two", None, Steps=4, Model="my, model: v2")
    parsed = metadata.parse_parameters(text)
    assert parsed["prompt"] == "line one\nline two" and parsed["negative_prompt"] == ""
    assert parsed["Model"] == "my, model: v2" and parsed["Steps"] == "4"


def test_a1111_text_parses():
    text = ("masterpiece, (cat:1.2)\nNegative prompt: lowres, bad anatomy\nSteps: 30, Sampler: DPM++ 2M Karras, "
            "CFG scale: 7.5, Seed: 42, Size: 512x768, Model hash: abc123, Model: sd15, Version: v1.9.0")
    parsed = metadata.parse_parameters(text)
    assert parsed["prompt"] == "masterpiece, (cat:1.2)"
    assert parsed["Size"] == "512x768" and parsed["Model hash"] == "abc123" and parsed["Version"] == "v1.9.0"


def test_unreadable_image(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        metadata.read_parameters(str(bad))
