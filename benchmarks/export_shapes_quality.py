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

SAMPLER = "DDIM KerasCV"  # deterministic: no per-step noise to amplify small differences
STEPS = 20
PROMPT_FOLLOWING_KEYS = ("single_color", "single_shape", "single_background")
MAX_DROP = 0.05  # accuracy points (as a fraction) a bundle may lose against Keras


def snr_db(reference, candidate):
    import numpy as np

    reference = np.asarray(reference, np.float64)
    error = np.asarray(candidate, np.float64) - reference
    power, noise = float(np.sum(reference ** 2)), float(np.sum(error ** 2))
    if not np.all(np.isfinite(error)):
        return float("nan")
    return 240.0 if noise == 0 else min(240.0, 10.0 * np.log10(power / noise))


def keras_outputs(model, records):
    import numpy as np

    from sd_keras.export.verify import _keras_output

    keras_models = {"text_encoder": model.text_encoder, "diffusion_model": model.diffusion_model,
                    "decoder": model.decoder, "image_encoder": model.image_encoder}
    return {component: [np.asarray(_keras_output(keras_models[component], component, feed)) for feed in feeds]
            for component, feeds in records.items()}


def component_snr(bundle_path, records, references):
    import numpy as np

    from sd_keras.export.bundle import read_bundle
    from sd_keras.export.runner import _Component

    bundle = read_bundle(bundle_path)
    result = {}
    for component, feeds in records.items():
        if not bundle.has(component):
            continue
        run = _Component(bundle, component, 2)
        values = [snr_db(reference, run(**feed)) for feed, reference in zip(feeds, references[component])]
        result[component] = {"worst_db": round(float(np.min(values)), 2), "mean_db": round(float(np.mean(values)), 2),
                             "inputs": len(values)}
    return result


def prompt_following(model, scenes):
    from sd_keras import evaluate

    report = evaluate.evaluate(model, scenes, num_steps=STEPS, sampler=SAMPLER)
    return {key: value["accuracy"] for key, value in report["summary"].items()}, report["seconds"]


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

    from sd_keras import evaluate, files
    from sd_keras.export import quantize
    from sd_keras.export.bundle import export_bundle
    from sd_keras.export.litert import ExportError
    from sd_keras.export.runner import BundleRunner
    from sd_keras.pipeline import StableDiffusion

    model = StableDiffusion.from_preset("shapes")
    scenes = evaluate.heldout_scenes(args.single, args.double)
    snr_prompts = [scene.caption for scene in scenes[:: max(1, len(scenes) // args.snr_prompts)]][:args.snr_prompts]
    started = time.perf_counter()
    records = quantize.record_trajectories(model, prompts=snr_prompts, num_steps=STEPS, sampler=SAMPLER)
    references = keras_outputs(model, records)
    keras_accuracy, keras_seconds = prompt_following(model, scenes)
    print("keras", json.dumps(keras_accuracy), f"{time.perf_counter() - started:.0f}s", flush=True)
    results = {"model": "shapes", "image_size": list(model.config.image_size), "date": time.strftime("%Y-%m-%d"),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores", "sampler": SAMPLER, "steps": STEPS,
               "snr_inputs": {name: len(feeds) for name, feeds in records.items()},
               "snr_prompts": snr_prompts, "evaluate_prompts": {"single": args.single, "double": args.double},
               "max_accuracy_drop": MAX_DROP, "keras": {"prompt_following": keras_accuracy,
                                                         "seconds": keras_seconds},
               "modes": {}}
    for spec in args.modes.split(";"):
        name = quantize.spec_name(quantize.parse_spec(spec))
        path = os.path.join(args.work, "shapes-" + name.replace(",", "_").replace("=", "-"))
        entry = {}
        try:
            if os.path.isfile(os.path.join(path, "report.json")):
                with open(os.path.join(path, "report.json")) as handle:
                    report = json.load(handle)
                if report["quantization"] != name:
                    raise SystemExit(f"{path} holds a {report['quantization']} bundle, not {name}")
            else:
                begun = time.perf_counter()
                report = export_bundle(model, path, quantization=spec, latency_runs=1)
                entry["export_seconds"] = round(time.perf_counter() - begun, 1)
        except ExportError as error:
            results["modes"][name] = {"error": str(error)}
            print(name, "export failed:", error, flush=True)
            continue
        entry["size_mb"] = round(report["total_size_bytes"] / 1e6, 2)
        entry["export_gate_image_psnr_db"] = round(report["end_to_end"]["psnr_db"], 2)
        entry["components"] = {
            component: {key: value for key, value in (
                ("quantization", item["quantization"]), ("activations", item.get("activations")),
                ("integer_only", item.get("integer_only")), ("size_mb", round(item["size_bytes"] / 1e6, 2)),
                ("latency_ms", round(item["latency"]["median_ms"], 1))) if value is not None}
            for component, item in report["components"].items()}
        for component, snr in component_snr(path, records, references).items():
            entry["components"][component]["snr"] = snr
        accuracy, seconds = prompt_following(BundleRunner(path, num_threads=2), scenes)
        entry["prompt_following"], entry["evaluate_seconds"] = accuracy, seconds
        drops = [f"{key} {accuracy[key]:.3f} vs Keras {keras_accuracy[key]:.3f}" for key in PROMPT_FOLLOWING_KEYS
                 if accuracy[key] is not None and keras_accuracy[key] is not None
                 and accuracy[key] < keras_accuracy[key] - MAX_DROP]
        entry["refused"] = bool(drops)
        if drops:
            entry["refused_because"] = "; ".join(drops)
        results["modes"][name] = entry
        print(name, json.dumps(entry), flush=True)
        files.write_json(args.out, results)  # partial results survive an interrupted run
    files.write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
