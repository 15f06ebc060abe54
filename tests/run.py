"""Run the test suite as pytest processes, one per test module by default, two at a time.

    python tests/run.py --slow                 # both tiers (CI runs this under each backend)
    python tests/run.py --slow -q -x           # options after the runner's own go to every pytest process
    python tests/run.py --slow --jobs 1        # one process at a time, its output as it comes
    python tests/run.py --groups 1 --jobs 1 --slow   # one process, as ``python -m pytest tests --slow``

Why processes: TensorFlow keeps every XLA program it compiles for the life of the process (its device compilation
cache has no eviction; tensorflow/tensorflow#64170), whether or not the model that compiled it still exists. The
slow tier builds and compiles hundreds of tiny models, and in one TensorFlow process it grew past the 24 GB of
this project's CI machine and was killed. A process per module gives that memory back after every module.

Why two at a time: a test process keeps about one core busy (the suite is compilation, conversion and Python more
than arithmetic), so on two cores two processes finish the suite in little more than half the time. Each
module's output is printed whole when it ends. The modules that build full-size models (``LARGE``, about 10 GiB
each) never run beside each other. Groups start in the order ``python -m pytest tests`` runs the files, but a
large one waits while another large one runs, and the next small one starts in its place.

The exit status is the first failing group's (pytest's own codes); a group in which every test was deselected
(exit status 5, "no tests collected") does not fail the run. The last line gives each group's time and peak
resident memory.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NO_TESTS_COLLECTED = 5
# Modules whose peak resident memory is about 10 GiB (full-size KerasCV and sd_keras models side by side under
# TensorFlow: 10.6 and 10.1 GiB); two of them at once would come near the 24 GB of the CI machine.
LARGE = ("test_keras_cv_generate.py", "test_keras_cv_interop.py")


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


def run_group(index, group, pytest_args, log):
    """One pytest process over ``group``, its output to the file ``log``; returns ``(exit code, seconds, peak
    resident memory in bytes)``. The memory is the process's own high-water mark (from ``wait4``)."""
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "pytest", *group, *pytest_args],
                               stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return process.returncode, time.monotonic() - start, usage.ru_maxrss * 1024


def main(argv=None, folder=HERE):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     usage="python tests/run.py [--groups N] [--jobs J] [pytest options]")
    parser.add_argument("--groups", type=int, default=None,
                        help="pytest processes to spread the modules over (default: one per module)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="groups running at once (2); with more than one, each group's output is printed when "
                             "it ends")
    args, pytest_args = parser.parse_known_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    paths = [arg for arg in pytest_args if not arg.startswith("-") and os.path.exists(arg.split("::")[0])]
    if paths:  # they would run beside every group's modules, not instead of them
        parser.error(f"runs the whole suite; for {' '.join(paths)} alone use python -m pytest {' '.join(paths)}")
    try:
        files = test_files(folder)
        work = list(enumerate([[path] for path in files] if args.groups is None else groups(files, args.groups), 1))
    except ValueError as error:
        parser.error(str(error))
    exit_first = bool({"-x", "--exitfirst"} & set(pytest_args))
    results, ready, stop = {}, threading.Condition(), threading.Event()
    large_running = [False]

    def is_large(group):
        return any(os.path.basename(path) in LARGE for path in group)

    def take():
        """The next group to run, skipping a large one while another large one runs; None when none are left."""
        with ready:
            while work and not stop.is_set():
                for position, (_, group) in enumerate(work):
                    if not (large_running[0] and is_large(group)):
                        large_running[0] = large_running[0] or is_large(group)
                        return work.pop(position)
                ready.wait()
            return None

    def worker():
        while (item := take()) is not None:
            index, group = item
            names = [os.path.basename(path) for path in group]
            title = f"== group {index}: {names[0]} .. {names[-1]} ({len(names)} modules)"
            code, seconds, peak = 1, 0.0, 0  # a group whose process could not run fails the run
            try:
                if args.jobs == 1:  # one at a time: the output as it comes, as a plain pytest run shows it
                    print(title, flush=True)
                    code, seconds, peak = run_group(index, group, pytest_args, None)
                else:
                    with tempfile.TemporaryFile() as log:
                        code, seconds, peak = run_group(index, group, pytest_args, log)
                        log.seek(0)
                        with ready:
                            print(title, flush=True)
                            sys.stdout.buffer.write(log.read())
                            sys.stdout.flush()
            finally:  # even then, the other worker must not wait for this large group forever
                with ready:
                    results[index] = (code, seconds, peak)
                    if is_large(group):
                        large_running[0] = False
                    if code not in (0, NO_TESTS_COLLECTED) and exit_first:
                        stop.set()
                    ready.notify_all()

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(args.jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    summary = [f"group {index}: exit {code} in {seconds:.0f} s, peak {peak / 2**30:.1f} GiB"
               for index, (code, seconds, peak) in sorted(results.items())]
    print("== " + "; ".join(summary) + f" == {time.monotonic() - start:.0f} s in all", flush=True)
    failed = [code for _, (code, _, _) in sorted(results.items()) if code not in (0, NO_TESTS_COLLECTED)]
    return failed[0] if failed else 0


if __name__ == "__main__":
    sys.exit(main())
