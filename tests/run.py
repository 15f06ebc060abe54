"""Run the test suite as a few pytest processes, each over a group of test files, one after the other.

    python tests/run.py --slow                 # both tiers (CI runs this under each backend)
    python tests/run.py --slow -q -x           # options after the runner's own go to every pytest process
    python tests/run.py --groups 1 --slow      # one process, as ``python -m pytest tests --slow``

Why groups: TensorFlow keeps every XLA program it compiles for the life of the process (its device compilation
cache has no eviction; tensorflow/tensorflow#64170), whether or not the model that compiled it still exists. The
slow tier builds and compiles hundreds of tiny models, and in one TensorFlow process it grew past the 24 GB of
this project's CI machine and was killed. A process per group gives that memory back between groups. The files
keep the order ``python -m pytest tests`` runs them in, and the groups run in that order.

The exit status is the first failing group's (pytest's own codes); a group in which every test was deselected
(exit status 5, "no tests collected") does not fail the run.
"""

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NO_TESTS_COLLECTED = 5


def test_files(folder=HERE):
    """The test modules in the order pytest collects them."""
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if name.startswith("test_") and name.endswith(".py"))


def groups(files, count):
    """``files`` cut into at most ``count`` consecutive groups of about the same number of source bytes (a
    module's size stands for its tests' share of the run)."""
    if count < 1:
        raise ValueError(f"--groups must be at least 1, got {count}")
    sizes = [os.path.getsize(path) for path in files]
    target = sum(sizes) / count
    result, current, filled = [], [], 0.0
    for path, size in zip(files, sizes):
        current.append(path)
        filled += size
        if filled >= target * (len(result) + 1) and len(result) < count - 1:
            result.append(current)
            current = []
    if current:
        result.append(current)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     usage="python tests/run.py [--groups N] [pytest options]")
    parser.add_argument("--groups", type=int, default=8, help="pytest processes to spread the modules over (8)")
    args, pytest_args = parser.parse_known_args(argv)
    paths = [arg for arg in pytest_args if not arg.startswith("-") and os.path.exists(arg.split("::")[0])]
    if paths:  # they would run beside every group's modules, not instead of them
        parser.error(f"runs the whole suite; for {' '.join(paths)} alone use python -m pytest {' '.join(paths)}")
    status, summary = 0, []
    for index, group in enumerate(groups(test_files(), args.groups), 1):
        names = [os.path.basename(path) for path in group]
        print(f"== group {index}: {names[0]} .. {names[-1]} ({len(names)} modules)", flush=True)
        start = time.monotonic()
        code = subprocess.call([sys.executable, "-m", "pytest", *group, *pytest_args])
        summary.append(f"group {index}: exit {code} in {time.monotonic() - start:.0f} s")
        if code not in (0, NO_TESTS_COLLECTED) and status == 0:
            status = code
            if {"-x", "--exitfirst"} & set(pytest_args):
                break
    print("== " + "; ".join(summary), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
