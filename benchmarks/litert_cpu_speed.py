"""LiteRT CPU latency of exported bundles: each component and a 20-step generation with CFG, 1 and 2 threads.

Every bundle given is run with LiteRT's ``CompiledModel`` on the CPU (XNNPACK, ``CpuOptions(num_threads=T,
xnnpack_weight_cache_path=...)``: the settings the Android app uses), for each thread count in ``--threads``:

- load: seconds to create each component's compiled model with an empty weight cache (XNNPACK packs the weights
  and writes the cache file) and again with the cache filled (the packed weights are read back), plus the cache
  files' size;
- components: median wall time (and this process's CPU time) of one call of the text encoder (one prompt), the
  UNet (the classifier-free-guidance pair, batch 2) and the decoder, after one warm-up call;
- end to end: ``sd_keras.export.runner.BundleRunner.text_to_image`` (tokenizer, prompt + negative prompt, the
  sampler's numpy loop, decoding) for ``--steps`` steps at guidance 7.5 with the components swapped for the
  compiled models above; ``--e2e-runs 0`` skips it and only the estimate ``2 x text encoder + steps x UNet +
  decoder`` from the component medians is written (it is written in every case).

``--interpreter`` also times the components with the classic ``ai_edge_litert.interpreter.Interpreter(num_threads=T)``
(the bundle runner's default path: XNNPACK applied by default, no weight cache), for comparison.

The load average (``os.getloadavg()``) is recorded before and after every measurement: on a shared machine the
wall times rise with other processes' load, the CPU times much less.

    python benchmarks/litert_cpu_speed.py /tmp/b/shapes-fp16 /tmp/b/shapes-int8 --threads 1,2 \\
        --repeats 5 --e2e-runs 3 --out benchmarks/results/litert_cpu_speed.json

A result file that exists is updated: the thread counts of a bundle measured again replace their entries, other
bundles and thread counts are kept (so large bundles can be measured in separate runs). Not a test: the numbers depend on the machine and its load.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPT = "a red circle on a blue background"
COMPONENTS = ("text_encoder", "diffusion_model", "decoder")


def _load():
    return [round(value, 2) for value in os.getloadavg()]


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _timed(fn, repeats):
    """Median / min wall ms and median CPU ms of ``repeats`` calls of ``fn``, with the load average around them."""
    load_before = _load()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append((time.perf_counter() - wall) * 1000.0)
        cpus.append((time.process_time() - cpu) * 1000.0)
    return {"wall_ms_median": round(statistics.median(walls), 2), "wall_ms_min": round(min(walls), 2),
            "cpu_ms_median": round(statistics.median(cpus), 2), "wall_ms_all": [round(w, 2) for w in walls],
            "repeats": repeats, "loadavg_before": load_before, "loadavg_after": _load()}


def _files(bundle, name):
    """``[(path, signature, inputs, outputs)]`` of a component: its file, or its parts in running order."""
    entry = bundle.component(name)
    if "parts" in entry:
        return [(os.path.join(bundle.path, part["file"]), part["signature"], part["inputs"], part["outputs"])
                for part in entry["parts"]]
    return [(bundle.component_path(name), entry["signature"], entry["inputs"], entry["outputs"])]


class CompiledSignature:
    """One LiteRT ``CompiledModel`` signature on the CPU, called like a signature runner (``**inputs -> dict``)."""

    def __init__(self, path, signature, inputs, outputs, threads, cache_file):
        from ai_edge_litert.compiled_model import CompiledModel, CpuOptions, HardwareAccelerator, Options

        options = Options(hardware_accelerators=HardwareAccelerator.CPU,
                          cpu_options=CpuOptions(num_threads=threads, xnnpack_weight_cache_path=cache_file or ""))
        self.model = CompiledModel.from_file(path, options=options)
        self.signature = signature
        self.inputs = {spec["name"]: self.model.create_input_buffer_by_name(signature, spec["name"])
                       for spec in inputs}
        self.input_dtypes = {spec["name"]: spec["dtype"] for spec in inputs}
        # One tensor that is two signature outputs (a UNet part's ``h`` is also its last skip) appears in the
        # CompiledModel's signature under one of the names only: the other names read the same buffer.
        available = self.model.get_output_tensor_details(signature)
        by_index = {details["index"]: name for name, details in available.items()}
        aliases = {}
        missing = [spec["name"] for spec in outputs if spec["name"] not in available]
        if missing:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType

            plain = Interpreter(model_path=path,
                                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            details = plain.get_signature_runner(signature).get_output_details()
            aliases = {name: by_index[details[name]["index"]] for name in missing}
            del plain
        self.outputs = {}
        for spec in outputs:
            name = aliases.get(spec["name"], spec["name"])
            if name not in self.outputs:
                self.outputs[name] = (self.model.create_output_buffer_by_name(signature, name),
                                      tuple(spec["shape"]), spec["dtype"])
        self.aliases = aliases

    def __call__(self, **feed):
        for name, buffer in self.inputs.items():
            buffer.write(np.ascontiguousarray(feed[name], dtype=self.input_dtypes[name]))
        self.model.run_by_name(self.signature, self.inputs,
                               {name: buffer for name, (buffer, _, _) in self.outputs.items()})
        values = {name: buffer.read(int(np.prod(shape)), np.dtype(dtype)).reshape(shape)
                  for name, (buffer, shape, dtype) in self.outputs.items()}
        values.update({alias: values[name] for alias, name in self.aliases.items()})
        return values


class Chain:
    """A component's files run in order on one name-to-tensor map (a UNet in parts); returns the last outputs."""

    def __init__(self, runners):
        self.runners = runners

    def __call__(self, **inputs):
        values, outputs = dict(inputs), {}
        for runner in self.runners:
            outputs = runner(**values)
            values.update(outputs)
        return outputs


class InterpreterSignature:
    """The classic ``Interpreter`` (XNNPACK by default, no weight cache) behind the same calling convention."""

    def __init__(self, path, signature, inputs, outputs, threads):
        from ai_edge_litert.interpreter import Interpreter

        self.runner = Interpreter(model_path=path, num_threads=threads).get_signature_runner(signature)
        self.input_names = [spec["name"] for spec in inputs]

    def __call__(self, **feed):
        return self.runner(**{name: feed[name] for name in self.input_names})


def _feed(bundle, name, rng):
    """Inputs of one component call: a tokenized prompt for the text encoder, Gaussian latents/contexts."""
    entry = bundle.component(name)
    feed = {}
    for spec in entry["inputs"]:
        shape, dtype = tuple(spec["shape"]), spec["dtype"]
        if spec["name"] == "positions":
            feed[spec["name"]] = np.arange(shape[-1], dtype=dtype).reshape(shape)
        elif np.dtype(dtype).kind in "iu":
            ids = np.full(shape, bundle.manifest["tokenizer"]["pad_id"], dtype=dtype)
            ids[..., :8] = rng.integers(0, 1000, size=ids[..., :8].shape)
            feed[spec["name"]] = ids
        else:
            feed[spec["name"]] = rng.standard_normal(shape).astype(dtype)
    return feed


def _open(bundle, name, threads, cache_dir, engine):
    runners = []
    for path, signature, inputs, outputs in _files(bundle, name):
        if engine == "interpreter":
            runners.append(InterpreterSignature(path, signature, inputs, outputs, threads))
        else:
            cache = os.path.join(cache_dir, os.path.basename(path) + ".xnnpack_cache") if cache_dir else None
            runners.append(CompiledSignature(path, signature, inputs, outputs, threads, cache))
    return runners[0] if len(runners) == 1 else Chain(runners)


def _cache_mb(cache_dir):
    total = 0
    for root, _, files in os.walk(cache_dir):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return round(total / 1e6, 1)


def measure_bundle(path, threads, *, repeats, e2e_runs, steps, scratch, interpreter):
    from sd_keras.export.bundle import read_bundle
    from sd_keras.export.runner import BundleRunner

    bundle = read_bundle(path)
    manifest = bundle.manifest
    rng = np.random.default_rng(0)
    result = {"model": manifest["model"], "quantization": manifest.get("quantization"),
              "image_size": manifest["image_size"], "default_sampler": manifest["default_sampler"],
              "size_mb": {name: round(sum(os.path.getsize(p) for p, *_ in _files(bundle, name)) / 1e6, 1)
                          for name in COMPONENTS},
              "files": {name: len(_files(bundle, name)) for name in COMPONENTS}, "threads": {}}
    feeds = {name: _feed(bundle, name, rng) for name in COMPONENTS}
    for count in threads:
        entry = result["threads"][str(count)] = {}
        cache_dir = os.path.join(scratch, f"cache-{os.path.basename(os.path.abspath(path))}-{count}")
        shutil.rmtree(cache_dir, ignore_errors=True)
        os.makedirs(cache_dir)
        runners, load = {}, {}
        for name in COMPONENTS:
            started = time.perf_counter()
            first = _open(bundle, name, count, cache_dir, "compiled")
            cold = time.perf_counter() - started
            del first
            started = time.perf_counter()
            runners[name] = _open(bundle, name, count, cache_dir, "compiled")
            load[name] = {"cold_cache_s": round(cold, 2), "warm_cache_s": round(time.perf_counter() - started, 2)}
        entry["load"] = load
        entry["weight_cache_mb"] = _cache_mb(cache_dir)
        entry["components_ms"] = {}
        for name in COMPONENTS:
            runners[name](**feeds[name])  # warm-up
            entry["components_ms"][name] = _timed(lambda: runners[name](**feeds[name]), repeats)
            print(f"{path} threads={count} {name}: {entry['components_ms'][name]['wall_ms_median']} ms",
                  file=sys.stderr, flush=True)
        ms = {name: entry["components_ms"][name]["wall_ms_median"] for name in COMPONENTS}
        entry["end_to_end_estimate_s"] = round(
            (2 * ms["text_encoder"] + steps * ms["diffusion_model"] + ms["decoder"]) / 1000.0, 2)
        if e2e_runs:
            runner = BundleRunner(path, num_threads=count)
            for name in COMPONENTS:  # the same compiled models (weight cache on) inside the runner's own loop
                getattr(runner, name).runner = runners[name]
            settings = dict(num_steps=steps, seed=1, unconditional_guidance_scale=7.5)
            runner.text_to_image(PROMPT, **settings)  # warm-up
            timing = _timed(lambda: runner.text_to_image(PROMPT, **settings), e2e_runs)
            entry["end_to_end"] = {"steps": steps, "guidance_scale": 7.5, "sampler": manifest["default_sampler"],
                                   "seconds_median": round(timing["wall_ms_median"] / 1000.0, 2),
                                   "cpu_seconds_median": round(timing["cpu_ms_median"] / 1000.0, 2),
                                   "seconds_all": [round(w / 1000.0, 2) for w in timing["wall_ms_all"]],
                                   "loadavg_before": timing["loadavg_before"],
                                   "loadavg_after": timing["loadavg_after"]}
            print(f"{path} threads={count} end to end: {entry['end_to_end']['seconds_median']} s",
                  file=sys.stderr, flush=True)
            del runner
        del runners
        shutil.rmtree(cache_dir, ignore_errors=True)
        if interpreter:
            entry["interpreter_components_ms"] = {}
            for name in COMPONENTS:
                runner = _open(bundle, name, count, None, "interpreter")
                runner(**feeds[name])
                entry["interpreter_components_ms"][name] = _timed(lambda: runner(**feeds[name]), repeats)
                del runner
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", help="bundle folders")
    parser.add_argument("--threads", default="1,2", help="comma-separated XNNPACK thread counts")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per component (median)")
    parser.add_argument("--e2e-runs", type=int, default=3, help="timed generations (0: estimate only)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--interpreter", action="store_true", help="also time the classic Interpreter")
    parser.add_argument("--scratch", default=None, help="folder for the weight caches (default: a temporary one)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "litert_cpu_speed.json"))
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    if any(t < 1 for t in threads):
        parser.error(f"--threads must list positive integers, got {args.threads!r}")
    for path in args.bundles:
        if not os.path.isfile(os.path.join(path, "manifest.json")):
            parser.error(f"{path}: not a bundle folder (no manifest.json)")

    import tempfile

    from sd_keras.export.bundle import write_json_atomic

    results = {"bundles": {}}
    if os.path.exists(args.out):
        with open(args.out) as handle:
            results = json.load(handle)
    results["machine"] = {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                          "ai_edge_litert": _version("ai-edge-litert")}
    with tempfile.TemporaryDirectory(prefix="litert_speed_", dir=args.scratch) as scratch:
        for path in args.bundles:
            key = os.path.basename(os.path.abspath(path))
            entry = measure_bundle(path, threads, repeats=args.repeats, e2e_runs=args.e2e_runs, steps=args.steps,
                                   scratch=scratch, interpreter=args.interpreter)
            entry["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            previous = results["bundles"].get(key, {})
            if previous.get("quantization") == entry["quantization"]:  # other thread counts measured earlier stay
                entry["threads"] = {**previous.get("threads", {}), **entry["threads"]}
            results["bundles"][key] = entry
            write_json_atomic(args.out, results)  # after each bundle: a long run keeps what it measured
    print(json.dumps(results, indent=1))
    return 0


def _version(package):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
