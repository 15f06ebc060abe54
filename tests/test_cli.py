import subprocess
import sys

import pytest

from sd_keras import cli, metadata


def run(*args):
    return subprocess.run([sys.executable, "-m", "sd_keras.cli", *args], capture_output=True, text=True)


def test_generate_writes_png_with_parameters_and_info_reads_it(tmp_path):
    out = tmp_path / "img_%d.png"
    result = run("generate", "-m", "tiny", "-p", "a red circle", "-n", "blurry", "-W", "64", "-H", "64",
                 "--steps", "3", "-s", "7", "-b", "2", "--sampling-method", "Euler a", "-o", str(out))
    assert result.returncode == 0, result.stderr
    texts = [metadata.read_parameters(str(tmp_path / f"img_{i}.png")) for i in range(2)]
    assert texts[0] == ("a red circle\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a, CFG scale: 7, "
                        "Seed: 7, Size: 64x64, Model: tiny")
    assert "Seed: 8," in texts[1]
    assert texts[0] in result.stdout and texts[1] in result.stdout
    info = run("info", str(tmp_path / "img_1.png"))
    assert info.returncode == 0 and "Seed: 8" in info.stdout and "negative_prompt: blurry" in info.stdout


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "num_steps"),
    (["-W", "100"], "width=100"),
    (["--sampling-method", "nope"], "sampler"),
    (["--cfg-scale", "nan"], "guidance"),
    (["-i", "/nonexistent/x.png"], "cannot read image"),
    (["--mask", "m.png"], "--mask needs --init-img"),
    (["-m", "no-such-model"], "unknown model"),
    (["--lora", "/nonexistent/style.safetensors:0.8"], "style.safetensors"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = run("generate", "-m", "tiny", "-p", "x", "-W", "64", "-H", "64", "--steps", "2",
                 "-o", str(tmp_path / "o.png"), *args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("sd-keras: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o.png").exists()


def test_default_model_is_the_shipped_demo_model(tmp_path):
    result = run("generate", "-p", "a red circle on a blue background", "--steps", "4", "-o", str(tmp_path / "o.png"))
    assert result.returncode == 0, result.stderr
    assert "Size: 128x128, Model: shapes" in metadata.read_parameters(str(tmp_path / "o.png"))


def test_info_without_parameters(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    assert cli.main(["info", str(tmp_path / "plain.png")]) == 2
