"""tests/run.py, the suite's runner: the groups of modules it hands to pytest processes."""

import importlib.util
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _runner():
    spec = importlib.util.spec_from_file_location("suite_runner", os.path.join(HERE, "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("count", [1, 3, 8, 500])
def test_groups_keep_every_module_once_in_pytests_order(count):
    runner = _runner()
    files = runner.test_files()
    assert files == sorted(files) and os.path.join(HERE, "test_test_runner.py") in files
    groups = runner.groups(files, count)
    assert [path for group in groups for path in group] == files
    assert 1 <= len(groups) <= min(count, len(files)) and all(groups)
    assert len(groups) == count or count > 1


def test_groups_share_the_source_about_evenly():
    runner = _runner()
    files = runner.test_files()
    total = sum(os.path.getsize(path) for path in files)
    largest = max(os.path.getsize(path) for path in files)
    for group in runner.groups(files, 8):
        assert sum(os.path.getsize(path) for path in group) <= total / 8 + largest


def test_no_groups_is_an_error():
    with pytest.raises(ValueError, match="--groups must be at least 1, got 0"):
        _runner().groups(["a"], 0)


def test_test_paths_are_refused_with_the_command_to_use(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _runner().main(["--slow", os.path.join(HERE, "test_test_runner.py")])
    assert exit_info.value.code == 2
    assert "use python -m pytest" in capsys.readouterr().err
