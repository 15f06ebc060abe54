"""Import time, load time and memory of the bundle runner (numpy + pillow + ai-edge-litert, no Keras).

Each measurement runs in a fresh Python process in which importing keras, tensorflow or jax raises, so the
numbers are those of a machine with only the runner's dependencies. For comparison, ``--baseline`` adds the
same run in a process that imports TensorFlow first (what loading the runner cost while the schedulers imported
Keras).

    python benchmarks/runner_footprint.py BUNDLE_DIR [BUNDLE_DIR ...] --out benchmarks/results/runner_footprint.json

Measured per bundle: seconds to import ``sd_keras.export.runner``, seconds to open the bundle (hash check and
interpreters), seconds for one 20-step generation (CFG, "DDIM KerasCV"), and the process's peak RSS in MB
(``ru_maxrss``) after each stage. Not a test: the numbers depend on the machine.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time
started = time.perf_counter()
if sys.argv[2] == "blocked":
    class NoFrameworks:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("keras", "tensorflow", "tf_keras", "jax", "jaxlib", "torch"):
                raise ImportError("blocked: " + name)
    sys.meta_path.insert(0, NoFrameworks())
else:
    import tensorflow  # noqa: F401  (the baseline: a process with TensorFlow loaded)

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

result = {}
from sd_keras.export.runner import BundleRunner
result["import_s"] = time.perf_counter() - started
result["rss_after_import_mb"] = rss_mb()
started = time.perf_counter()
runner = BundleRunner(sys.argv[1], num_threads=int(sys.argv[3]))
result["load_s"] = time.perf_counter() - started
result["rss_after_load_mb"] = rss_mb()
started = time.perf_counter()
runner.text_to_image("a red circle on a blue background", num_steps=20, seed=1, sampler="DDIM KerasCV")
result["generate_20_steps_s"] = time.perf_counter() - started
result["peak_rss_mb"] = rss_mb()
result["frameworks_loaded"] = sorted({name.split(".")[0] for name in sys.modules
                                      if name.split(".")[0] in ("keras", "tensorflow", "jax")})
print(json.dumps(result))
"""


def measure(bundle, mode, threads):
    completed = subprocess.run([sys.executable, "-c", CHILD, bundle, mode, str(threads)], capture_output=True,
                               text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"{bundle} ({mode}): {completed.stderr.strip()[-2000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return {key: round(value, 3) if isinstance(value, float) else value for key, value in result.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--out", default="runner_footprint.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs per bundle; the median of each number")
    parser.add_argument("--baseline", action="store_true", help="also measure with TensorFlow imported first")
    args = parser.parse_args(argv)

    from sd_keras.export.bundle import read_bundle, write_json_atomic

    results = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "python": platform.python_version(), "threads": args.threads, "bundles": {}}
    for bundle in args.bundles:
        manifest = read_bundle(bundle).manifest
        size = sum(os.path.getsize(os.path.join(bundle, name)) for name in os.listdir(bundle))
        entry = {"model": manifest["model"], "quantization": manifest.get("quantization"),
                 "image_size": manifest["image_size"], "bundle_mb": round(size / 1e6, 2)}
        for mode in ("blocked", "tensorflow") if args.baseline else ("blocked",):
            runs = [measure(bundle, mode, args.threads) for _ in range(args.repeats)]
            summary = {key: sorted(run[key] for run in runs)[len(runs) // 2] for key in runs[0]
                       if key != "frameworks_loaded"}
            summary["frameworks_loaded"] = runs[0]["frameworks_loaded"]
            entry["runner_only" if mode == "blocked" else "with_tensorflow_imported"] = summary
        results["bundles"][os.path.basename(os.path.normpath(bundle))] = entry
        print(json.dumps(entry), flush=True)
    write_json_atomic(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
