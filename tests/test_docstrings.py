"""The docstring examples run: every module of sd_keras (and of export/, installed as sd_keras.export) that holds a
``>>>`` example is run with doctest, in an empty folder. An example that needs downloaded weights, a network, a
GPU or minutes carries ``# doctest: +SKIP`` and is kept accurate by hand (it shows the call, not a result).
"""

import doctest
import importlib
import pathlib

import pytest

pytestmark = pytest.mark.once  # the examples use the tiny models and numpy: the same under either backend

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = {"sd_keras": ROOT / "sd_keras", "sd_keras.export": ROOT / "export"}  # setup.py's package_dir
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
# Examples that build the tiny model and compile a whole generation (tens of seconds on a 2-core CPU): slow tier
SLOW = {"sd_keras", "sd_keras.generator", "sd_keras.pipeline", "sd_keras.hires", "sd_keras.pipeline_sdxl"}


def modules_with_examples():
    found = []
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            if ">>>" not in path.read_text(encoding="utf-8"):
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            found.append(pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name)
    return found


@pytest.mark.parametrize("name", modules_with_examples())
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = []
    for test in finder.find(module, name):
        result = runner.run(test, out=report.append)
        assert result.failed == 0, "".join(report)
