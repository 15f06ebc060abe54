"""Parity gates of an exported bundle: every ``.tflite`` against its Keras source, and the whole loop.

Nothing the converter writes is trusted (a decoder converted through another path once came out as a 184 KB file
that produced NaN): each component runs in the LiteRT interpreter on inputs recorded from real sampling
trajectories and is compared with the Keras model on the same inputs, and the bundle runner's image is compared
with the Keras pipeline's image for the same prompt, seed and sampler.

Metrics (reference = Keras, candidate = LiteRT):

``max_abs_rel``  ``max|candidate - reference| / max|reference|`` (the worst sample).
``psnr_db``      ``20 log10(peak / rmse)``, peak = the reference's range (max - min) for components, 255 for uint8
                 images (the worst sample; identical outputs report 240 dB).
``cosine``       cosine similarity of the flattened outputs (the worst sample).
``max_abs_diff`` for images: the largest difference in uint8 levels.

Gates (``GATES``): fp32 must match Keras per component (max-abs-relative <= 1e-4) and end to end (no pixel
off by more than 2 levels). The other modes are gated per component on cosine similarity, and end to end on
image PSNR (fp16 >= 35 dB, int8 >= 25 dB, int8-full >= 25 dB, w8a16 >= 25 dB, int4 >= 20 dB) when the weights
are trained. A bundle with a mode per component gates each component with its own mode's thresholds and the
image with the loosest of its modes'.
The component cosine floors (fp16 0.9999 with PSNR >= 50 dB, int8 0.99, w8a16 0.98, int4 0.9, int8-full 0.75)
hold with
random and with trained weights; they catch a broken conversion, not a small loss of quality. With
random weights (the ``tiny`` preset) an image PSNR of a quantized model says little: a random UNet driven
with guidance amplifies any perturbation, so the number is reported and not gated.

Example:
    >>> metrics(np.ones(4), np.ones(4))["cosine"]
    1.0
"""

import math
import time

import numpy as np

MAX_PSNR_DB = 240.0
# metric -> (comparison, threshold); "component" gates apply to every component, "image" to the end-to-end image.
GATES = {
    "fp32": {"component": {"max_abs_rel": ("<=", 1e-4)}, "image": {"max_abs_diff": ("<=", 2)}},
    "fp16": {"component": {"cosine": (">=", 0.9999), "psnr_db": (">=", 50.0)}, "image": {"psnr_db": (">=", 35.0)}},
    "int8": {"component": {"cosine": (">=", 0.99)}, "image": {"psnr_db": (">=", 25.0)}},
    # int8 activations of attention models lose much more than int8 weights (tiny, random weights: UNet cosine
    # 0.80, text encoder 0.85, VAE 0.99); 0.75 still rejects a broken file (cosine near 0 or NaN).
    "int8-full": {"component": {"cosine": (">=", 0.75)}, "image": {"psnr_db": (">=", 25.0)}},
    "w8a16": {"component": {"cosine": (">=", 0.98)}, "image": {"psnr_db": (">=", 25.0)}},
    "int4": {"component": {"cosine": (">=", 0.9)}, "image": {"psnr_db": (">=", 20.0)}},
}
# Image gates that hold whatever the weights: the fp32 bundle must reproduce the Keras image exactly.
WEIGHT_INDEPENDENT_IMAGE_GATES = ("fp32",)


def image_gates(modes):
    """The end-to-end image gates of a bundle whose components use ``modes``: for each metric, the loosest
    threshold among those modes' (a bundle is judged no stricter than its least precise component)."""
    gates = {}
    for mode in dict.fromkeys(modes):
        for metric, (op, threshold) in GATES[mode]["image"].items():
            if metric not in gates:
                gates[metric] = (op, threshold)
            else:
                loosest = max if op == "<=" else min
                gates[metric] = (op, loosest(gates[metric][1], threshold))
    return gates


def _psnr(reference, candidate, peak):
    rmse = float(np.sqrt(np.mean((candidate - reference) ** 2)))
    if rmse <= peak * 10 ** (-MAX_PSNR_DB / 20) or peak == 0:
        return MAX_PSNR_DB
    return min(MAX_PSNR_DB, 20.0 * math.log10(peak / rmse))


def metrics(reference, candidate):
    """``max_abs_rel``, ``psnr_db`` and ``cosine`` of a candidate output against its reference (float64 maths)."""
    reference = np.asarray(reference, np.float64).ravel()
    candidate = np.asarray(candidate, np.float64).ravel()
    if reference.shape != candidate.shape:
        raise ValueError(f"output sizes differ: {reference.shape} vs {candidate.shape}")
    if not np.all(np.isfinite(candidate)):
        return {"max_abs_rel": float("nan"), "psnr_db": float("nan"), "cosine": float("nan"), "finite": False}
    scale = float(np.max(np.abs(reference))) or 1.0
    norms = float(np.linalg.norm(reference) * np.linalg.norm(candidate))
    cosine = float(np.dot(reference, candidate) / norms) if norms else float(np.array_equal(reference, candidate))
    return {
        "max_abs_rel": float(np.max(np.abs(candidate - reference)) / scale),
        "psnr_db": _psnr(reference, candidate, float(reference.max() - reference.min())),
        "cosine": min(cosine, 1.0),
        "finite": True,
    }


def image_metrics(reference, candidate):
    """PSNR (peak 255) and largest/mean level difference of two uint8 image batches."""
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    difference = np.abs(candidate - reference)
    return {"psnr_db": _psnr(reference, candidate, 255.0), "max_abs_diff": int(difference.max()),
            "mean_abs_diff": float(difference.mean())}


def _worst(results):
    worst = {"max_abs_rel": max(r["max_abs_rel"] for r in results), "psnr_db": min(r["psnr_db"] for r in results),
             "cosine": min(r["cosine"] for r in results), "finite": all(r["finite"] for r in results)}
    if not worst["finite"]:
        worst.update(max_abs_rel=float("nan"), psnr_db=float("nan"), cosine=float("nan"))
    return worst


def _keras_output(model, component, feed):
    if component in ("text_encoder", "diffusion_model"):
        return np.asarray(model.predict_on_batch(feed), np.float32)
    (value,) = feed.values()
    return np.asarray(model.predict_on_batch(value), np.float32)


def compare_component(model, component, path, entry, feeds, *, threads=2):
    """Run the ``.tflite`` at ``path`` and the Keras ``model`` on each feed; the worst metrics over the feeds."""
    from sd_keras.export.runner import open_signature

    from sd_keras.export.litert import ExportError

    output_name = entry["outputs"][0]["name"]
    results = []
    try:
        runner = open_signature(path, entry, threads)
        for feed in feeds:
            feed = {spec["name"]: np.asarray(feed[spec["name"]], spec["dtype"]) for spec in entry["inputs"]}
            candidate = runner(**feed)[output_name]
            results.append(metrics(_keras_output(model, component, feed), candidate))
    except RuntimeError as error:  # the LiteRT interpreter refused the file (e.g. a kernel without the type)
        if isinstance(error, ExportError):
            raise
        raise ExportError(f"{component}: the exported file does not run in LiteRT: "
                          f"{' '.join(str(error).split())[-300:]}") from None
    return {**_worst(results), "samples": len(results)}


def measure_latency(path, entry, feed, *, runs=3, threads=2):
    """Median / min wall time (ms) of one interpreter invocation, after one warm-up run (XNNPACK, CPU)."""
    from sd_keras.export.runner import open_signature

    runner = open_signature(path, entry, threads)
    feed = {spec["name"]: np.asarray(feed[spec["name"]], spec["dtype"]) for spec in entry["inputs"]}
    runner(**feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner(**feed)
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": float(np.median(times)), "min_ms": float(np.min(times)), "runs": runs,
            "threads": threads, "delegate": "XNNPACK"}


def check_gates(values, gates):
    """``[{"metric", "op", "threshold", "value", "passed"}]`` for each gated metric (NaN never passes)."""
    results = []
    for metric, (op, threshold) in gates.items():
        value = values.get(metric)
        ok = value is not None and not (isinstance(value, float) and math.isnan(value)) and (
            value <= threshold if op == "<=" else value >= threshold)
        results.append({"metric": metric, "op": op, "threshold": threshold, "value": value, "passed": bool(ok)})
    return results


def failures(report):
    """Human-readable list of the failed gates of a report (empty when it passed)."""
    failed = []
    for component, entry in report.get("components", {}).items():
        for gate in entry.get("gates", []):
            if not gate["passed"]:
                failed.append(f"{component} {gate['metric']} {gate['value']} (needs {gate['op']} "
                              f"{gate['threshold']})")
    for gate in report.get("end_to_end", {}).get("gates", []):
        if gate["passed"] is False and gate.get("enforced", True):
            failed.append(f"end-to-end image {gate['metric']} {gate['value']} (needs {gate['op']} "
                          f"{gate['threshold']})")
    return failed


def end_to_end(model, runner, *, prompt, seed, sampler, num_steps, guidance_scale):
    """The Keras pipeline's and the bundle runner's images for the same settings, and their ``image_metrics``."""
    settings = dict(num_steps=num_steps, unconditional_guidance_scale=guidance_scale, seed=seed, sampler=sampler,
                    height=runner.image_size[0], width=runner.image_size[1])
    reference = model.text_to_image(prompt, **settings)
    candidate = runner.text_to_image(prompt, **settings)
    return {"prompt": prompt, "seed": seed, "sampler": sampler, "num_steps": num_steps,
            "guidance_scale": guidance_scale, **image_metrics(reference, candidate)}


def evaluate(model, bundle_path, manifest, records, mode, *, random_weights, threads=2, latency_runs=3,
             max_samples=6, end_to_end_settings=None):
    """Measure and gate a written bundle; the report dict (``report["passed"]`` tells).

    Args:
        model: the source ``StableDiffusion`` (Keras).
        bundle_path: the bundle folder (its manifest already written).
        manifest: the manifest dict.
        records: ``{component: [feed, ...]}`` recorded from real trajectories (``quantize.record_trajectories``).
        mode: the quantization mode, or ``{component: mode}`` (``quantize.parse_spec``).
        random_weights: True when the weights are random (image gates of quantized modes are not enforced).
        max_samples: parity feeds per component (evenly picked from the records).
        end_to_end_settings: ``end_to_end`` keyword arguments, or None to skip the image comparison.
    """
    import os

    from sd_keras.export.runner import BundleRunner

    from sd_keras.export import quantize

    plan = quantize.parse_spec(mode)
    present = tuple(manifest["components"])
    modes = [plan[component] for component in present]
    image = image_gates(modes)
    report = {"model": manifest["model"], "quantization": quantize.spec_name(plan, present),
              "image_size": manifest["image_size"], "random_weights": bool(random_weights),
              "thresholds": {"components": {component: GATES[plan[component]]["component"] for component in present},
                             "image": image},
              "components": {}}
    keras_models = {"text_encoder": model.text_encoder, "diffusion_model": model.diffusion_model,
                    "decoder": model.decoder, "image_encoder": model.image_encoder}
    for component, entry in manifest["components"].items():
        path = bundle_path if "parts" in entry else os.path.join(bundle_path, entry["file"])
        files = [os.path.join(bundle_path, part["file"]) for part in entry.get("parts", [entry])]
        feeds = records[component]
        picked = [feeds[i] for i in sorted(set(np.linspace(0, len(feeds) - 1, min(max_samples, len(feeds)))
                                               .round().astype(int)))]
        parity = compare_component(keras_models[component], component, path, entry, picked, threads=threads)
        report["components"][component] = {
            "files": [os.path.basename(file) for file in files], "size_bytes": sum(map(os.path.getsize, files)),
            "quantization": entry["quantization"],
            "parity": parity, "latency": measure_latency(path, entry, picked[0], runs=latency_runs, threads=threads),
            "gates": check_gates(parity, GATES[plan[component]]["component"]),
            **{fact: entry[fact] for fact in ("integer_only", "float_ops", "activations", "int8_activations_psnr_db",
                                              "int16_activations_psnr_db") if fact in entry},
        }
    report["total_size_bytes"] = sum(entry["size_bytes"] for entry in report["components"].values())
    if end_to_end_settings is not None:
        runner = BundleRunner(bundle_path, num_threads=threads)
        result = end_to_end(model, runner, **end_to_end_settings)
        enforced = not random_weights or all(mode in WEIGHT_INDEPENDENT_IMAGE_GATES for mode in modes)
        result["gates"] = [dict(gate, enforced=enforced) for gate in check_gates(result, image)]
        report["end_to_end"] = result
    report["failures"] = failures(report)
    report["passed"] = not report["failures"]
    return report
