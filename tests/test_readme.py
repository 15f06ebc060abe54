"""README.md's code runs as written: its Python blocks, offline, on the shipped demo model."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def code_blocks(language):
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)


@pytest.mark.slow
def test_readme_python_blocks_run_offline(tmp_path):
    from sd_keras import metadata

    blocks = code_blocks("python")
    assert blocks, "README.md has no python block"
    # as a reader would paste them: one fresh interpreter, in an empty folder, with no weights cached and the
    # network unreachable (a proxy that refuses every connection); JAX, since it compiles the block's four
    # programs faster than TensorFlow on a CPU (98 s against 160 s on two busy cores)
    env = dict(os.environ, KERAS_BACKEND="jax", SD_KERAS_CACHE=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="2",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    for number, block in enumerate(blocks):
        done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"README python block {number} failed:\n{block}\n{done.stderr[-3000:]}"
    # what the first block says it writes
    for i in range(4):
        parsed = metadata.parse_parameters(metadata.read_parameters(tmp_path / f"circle_{i}.png"))
        assert (parsed["prompt"], parsed["Seed"], parsed["Model"]) == ("a red circle on a blue background",
                                                                       str(1 + i), "shapes")
    assert (tmp_path / "circles.png").exists() and (tmp_path / "inpainted.png").exists()


pytestmark = pytest.mark.once  # the README's code does not depend on the backend the suite runs under
