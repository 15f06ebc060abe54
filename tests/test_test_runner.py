"""tests/run.py, the suite's runner: the groups of modules it hands to pytest processes, and how it runs them
side by side."""

import importlib.util
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.once  # backend-independent (see conftest.py)


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


def test_jobs_below_one_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _runner().main(["--jobs", "0"])
    assert exit_info.value.code == 2
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err


RENDEZVOUS = '''
import os, time

def test_meets_the_other_group():
    here = os.path.dirname(__file__)
    open(os.path.join(here, "{name}.started"), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(here, "{other}.started")):
        assert time.monotonic() < deadline, "the other group never ran beside this one"
        time.sleep(0.05)
    print("{name} " * 50)
'''


@pytest.mark.slow
def test_jobs_run_groups_side_by_side_and_print_each_groups_output_whole(tmp_path, capfd):
    for name, other in (("a", "b"), ("b", "a")):
        (tmp_path / f"test_{name}.py").write_text(RENDEZVOUS.format(name=name, other=other))
    (tmp_path / "test_c.py").write_text("def test_fails():\n    assert 1 == 2\n")
    code = _runner().main(["--groups", "3", "--jobs", "2", "-q", "-s", "-p", "no:cacheprovider"], folder=tmp_path)
    out = capfd.readouterr().out
    assert code == 1  # test_c's failure, though the groups before it passed
    for name in "ab":  # each group's output in one piece under its own title
        block = out.split(f"== group {'ab'.index(name) + 1}: test_{name}.py")[1].split("== group")[0]
        other = "b" if name == "a" else "a"
        assert f"{name} " * 50 in block and f"{other} " * 50 not in block and "1 passed" in block
    summary = out.strip().splitlines()[-1]
    assert "group 1: exit 0" in summary and "group 2: exit 0" in summary and "group 3: exit 1" in summary
    assert "GiB" in summary and "s in all" in summary


def test_the_large_modules_exist():
    runner = _runner()
    names = {os.path.basename(path) for path in runner.test_files()}
    assert set(runner.LARGE) <= names


LARGE_MODULE = '''
import os, time

def test_runs_alone_among_the_large():
    here = os.path.dirname(__file__)
    assert not os.path.exists(os.path.join(here, "{other}.running")), "two large modules ran at once"
    open(os.path.join(here, "{name}.running"), "w").close()
    deadline = time.monotonic() + 60
    while "{name}" == "a" and not os.path.exists(os.path.join(here, "c.started")):
        assert time.monotonic() < deadline, "the small module did not start beside the large one"
        time.sleep(0.05)
    time.sleep(1)
    os.remove(os.path.join(here, "{name}.running"))
'''


@pytest.mark.slow
def test_a_large_module_waits_for_another_and_a_small_one_runs_meanwhile(tmp_path, monkeypatch, capfd):
    runner = _runner()
    monkeypatch.setattr(runner, "LARGE", ("test_a.py", "test_b.py"))
    for name, other in (("a", "b"), ("b", "a")):
        (tmp_path / f"test_{name}.py").write_text(LARGE_MODULE.format(name=name, other=other))
    (tmp_path / "test_c.py").write_text(
        "import os, time\n\ndef test_small():\n"
        "    open(os.path.join(os.path.dirname(__file__), 'c.started'), 'w').close()\n    time.sleep(0.2)\n")
    assert runner.main(["-q", "-p", "no:cacheprovider"], folder=tmp_path) == 0
    out = capfd.readouterr().out
    assert out.index("== group 3: test_c.py") < out.index("== group 2: test_b.py")  # c took b's turn
    assert "group 1: exit 0" in out and "group 2: exit 0" in out and "group 3: exit 0" in out
