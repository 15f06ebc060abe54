"""The SD_KERAS_* environment variables: one parser (sd_keras.env), used by every switch, listed in the README."""

import os
import pathlib
import re

import pytest

from sd_keras import backend, env, paths
from sd_keras.errors import InputError

ROOT = pathlib.Path(__file__).resolve().parent.parent
VARIABLE = "SD_KERAS_TEST_SWITCH"


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "Yes", "on", " On "])
def test_flag_on_words(monkeypatch, value):
    monkeypatch.setenv(VARIABLE, value)
    assert env.flag(VARIABLE, False) is True


@pytest.mark.parametrize("value", ["0", "false", "False", "NO", "off", "oFF\n"])
def test_flag_off_words(monkeypatch, value):
    monkeypatch.setenv(VARIABLE, value)
    assert env.flag(VARIABLE, True) is False


@pytest.mark.parametrize("value", [None, "", "  "])
def test_flag_unset_or_empty_gives_the_default(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(VARIABLE, raising=False)
    else:
        monkeypatch.setenv(VARIABLE, value)
    assert env.flag(VARIABLE, "auto") == "auto"


@pytest.mark.parametrize("value", ["ture", "2", "enabled", "y", "-1"])
def test_flag_refuses_other_values_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(VARIABLE, value)
    with pytest.raises(InputError, match=rf"^{VARIABLE}={re.escape(repr(value))}: not a switch value"):
        env.flag(VARIABLE, True)


def test_path_and_text(monkeypatch):
    monkeypatch.setenv(VARIABLE, "~/somewhere")
    assert env.path(VARIABLE) == os.path.join(os.path.expanduser("~"), "somewhere")
    monkeypatch.setenv(VARIABLE, "")
    assert env.path(VARIABLE, "fallback") == "fallback"
    assert env.text(VARIABLE) == ""  # exactly as set: an empty secret is the caller's to refuse
    monkeypatch.delenv(VARIABLE)
    assert env.text(VARIABLE, "unset") == "unset"


def test_cache_dir_follows_sd_keras_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SD_KERAS_CACHE", str(tmp_path))
    assert paths.cache_dir("sd-v1") == os.path.join(str(tmp_path), "sd-v1")
    monkeypatch.setenv("SD_KERAS_CACHE", "")
    assert paths.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "sd_keras")


def test_tf_xla_switch_takes_every_flag_word(monkeypatch):
    # SD_KERAS_TF_XLA once took 1/true/yes/on and read anything else (a typo included) as off
    monkeypatch.setenv("SD_KERAS_TF_XLA", "OFF")
    assert backend.tf_uses_xla(num_params=1) is False
    monkeypatch.setenv("SD_KERAS_TF_XLA", "yes")
    assert backend.tf_uses_xla(num_params=10**9) is True
    monkeypatch.setenv("SD_KERAS_TF_XLA", "ture")
    with pytest.raises(InputError, match="SD_KERAS_TF_XLA='ture'"):
        backend.tf_uses_xla(num_params=1)


def test_conv_as_matmul_switch_takes_every_flag_word(monkeypatch):
    # SD_KERAS_CONV_AS_MATMUL once took only "0" (so "off" or "false" left it on)
    shape, kernel = (2, 2, 2, 2560), (3, 3, 2560, 1280)  # the SD 1.x UNet's deepest convolution
    monkeypatch.setenv("SD_KERAS_CONV_AS_MATMUL", "off")
    assert backend.conv_as_matmul(shape, kernel) is False
    monkeypatch.setenv("SD_KERAS_CONV_AS_MATMUL", "nein")
    with pytest.raises(InputError, match="SD_KERAS_CONV_AS_MATMUL='nein'"):
        backend.conv_as_matmul(shape, kernel)


def _source_files():
    return sorted((ROOT / "sd_keras").rglob("*.py")) + sorted((ROOT / "export").rglob("*.py"))


def test_only_sd_keras_env_reads_the_variables():
    reads = re.compile(r"(os\.environ(\.get)?\s*[\[(]|os\.getenv\()\s*[\"']SD_KERAS_")
    offenders = [str(path.relative_to(ROOT)) for path in _source_files()
                 if path.name != "env.py" and reads.search(path.read_text(encoding="utf-8"))]
    assert offenders == []


def test_every_variable_is_listed_in_env_and_in_the_readme_table():
    named = set()
    for path in _source_files():
        named |= set(re.findall(r"[\"'`$](SD_KERAS_[A-Z0-9_]+)", path.read_text(encoding="utf-8")))
    named.discard("SD_KERAS_EXAMPLE")  # sd_keras.env's docstring example
    assert named <= set(env.VARIABLES), f"not in sd_keras.env.VARIABLES: {sorted(named - set(env.VARIABLES))}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = set(re.findall(r"^\| `(SD_KERAS_[A-Z0-9_]+)` \|", readme, flags=re.MULTILINE))
    assert table == set(env.VARIABLES)
