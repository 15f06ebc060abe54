"""Quantization quality of the trained demo model, measured the way a user meets it: every export mode of
``shapes`` judged on many prompts, every step of full-length trajectories, and prompt-following.

For each mode the script exports the shipped ``shapes`` model (128x128) with the CLI's defaults (or reuses a
bundle of that mode in ``--work``) and measures:

- **component SNR** against Keras on inputs recorded from full 20-step trajectories of ``--snr-prompts``
  held-out prompts with a deterministic sampler ("DDIM KerasCV"): every UNet call of every step, the text
  encoder on every prompt (and the empty prompt), the decoder on every final latent, the VAE encoder on every
  decoded image. ``SNR = 10 log10(sum(ref^2) / sum((out - ref)^2))`` per input; the worst and the mean;
- **prompt-following**: ``sd_keras.evaluate`` on held-out prompts (``--single`` one-object and ``--double``
  two-object prompts) at 20 steps with the same deterministic sampler, for the Keras model and for the bundle
  (``BundleRunner``, the on-device loop). A bundle whose single-object colour, shape or background accuracy is
  more than 5 points below the Keras model's is marked ``refused`` with the reason.

Both are the exporter's own quality gates (``sd_keras.export.verify.quality_reference`` / ``quality_gates``),
measured against Keras once and applied to every mode: an export this script runs refuses such a bundle exactly
as ``sd-keras export`` does (the numbers are then read from ``<bundle>.report.json``).

    KERAS_BACKEND=tensorflow python benchmarks/export_shapes_quality.py --work /tmp/bundles \\
        --out benchmarks/results/export_shapes_quality.json

Not a test: exporting and evaluating every mode takes about half an hour on a 2-core CPU (int16 activations
run on LiteRT's reference kernels).
"""

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def mode_entry(report, quality):
    """The results entry of one mode from its export report and the quality gates' section."""
    entry = {"size_mb": round(report["total_size_bytes"] / 1e6, 2)}
    if "end_to_end" in report:
        entry["export_gate_image_psnr_db"] = round(report["end_to_end"]["psnr_db"], 2)
    entry["components"] = {
        component: {key: value for key, value in (
            ("quantization", item["quantization"]), ("activations", item.get("activations")),
            ("integer_only", item.get("integer_only")), ("size_mb", round(item["size_bytes"] / 1e6, 2)),
            ("latency_ms", round(item["latency"]["median_ms"], 1))) if value is not None}
        for component, item in report["components"].items()}
    for component, snr in quality["component_snr"].items():
        entry["components"][component]["snr"] = {key: snr[key] for key in ("worst_db", "mean_db", "inputs")}
    following = quality["prompt_following"]
    entry["prompt_following"], entry["evaluate_seconds"] = following["bundle"], following["bundle_seconds"]
    entry["refused"] = not quality["passed"]
    if quality["failures"]:
        entry["refused_because"] = "; ".join(quality["failures"])
    return entry


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="export_shapes_quality.json")
    parser.add_argument("--work", required=True, help="folder for the bundles (reused when present)")
    parser.add_argument("--modes", default="fp32,fp16,int8,int8-full,w8a16,int4",
                        help="modes or per-component specs, separated by ';'")
    parser.add_argument("--snr-prompts", type=int, default=8)
    parser.add_argument("--single", type=int, default=24)
    parser.add_argument("--double", type=int, default=8)
    args = parser.parse_args(argv)

    from sd_keras import files
    from sd_keras.export import quantize, verify
    from sd_keras.export.exporter import export_bundle
    from sd_keras.export.litert import ExportError
    from sd_keras.pipeline import StableDiffusion

    model = StableDiffusion.from_preset("shapes")
    started = time.perf_counter()
    # The exporter's own gates, measured against Keras once for every mode.
    reference = verify.quality_reference(model, prompts=args.snr_prompts, evaluate_prompts=(args.single, args.double),
                                         log=print)
    keras_accuracy = reference["keras_prompt_following"]
    print("keras", json.dumps(keras_accuracy), f"{time.perf_counter() - started:.0f}s", flush=True)
    results = {"model": "shapes", "image_size": list(model.config.image_size), "date": time.strftime("%Y-%m-%d"),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores", "sampler": reference["sampler"],
               "steps": reference["num_steps"],
               "snr_inputs": {name: len(feeds) for name, feeds in reference["records"].items()},
               "snr_prompts": reference["prompts"], "evaluate_prompts": {"single": args.single, "double": args.double},
               "max_accuracy_drop": verify.MAX_ACCURACY_DROP,
               "keras": {"prompt_following": keras_accuracy, "seconds": reference["keras_evaluate_seconds"]},
               "modes": {}}
    for spec in args.modes.split(";"):
        plan = quantize.parse_spec(spec)
        name = quantize.spec_name(plan)
        path = os.path.join(args.work, "shapes-" + name.replace(",", "_").replace("=", "-"))
        entry = {}
        try:
            if os.path.isfile(os.path.join(path, "report.json")):
                with open(os.path.join(path, "report.json")) as handle:
                    report = json.load(handle)
                if report["quantization"] != name:
                    raise SystemExit(f"{path} holds a {report['quantization']} bundle, not {name}")
                quality = verify.quality_gates(path, plan, reference, random_weights=False)
            else:
                begun = time.perf_counter()
                report = export_bundle(model, path, quantization=spec, latency_runs=1, quality_reference=reference)
                entry["export_seconds"] = round(time.perf_counter() - begun, 1)
                quality = report["quality"]
        except ExportError as error:
            failed_report = f"{os.path.abspath(path)}.report.json"
            if not os.path.isfile(failed_report):
                results["modes"][name] = {"error": str(error)}
                print(name, "export failed:", error, flush=True)
                continue
            with open(failed_report) as handle:
                report = json.load(handle)
            if "quality" not in report:  # refused by a parity check before the quality gates
                results["modes"][name] = {"error": str(error)}
                print(name, "export failed:", error, flush=True)
                continue
            quality = report["quality"]
        entry.update(mode_entry(report, quality))
        results["modes"][name] = entry
        print(name, json.dumps(entry), flush=True)
        files.write_json(args.out, results)  # partial results survive an interrupted run
    files.write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
