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

Quality gates (``quality_reference`` / ``quality_gates``, run by the exporter after the checks above): every
component against Keras on every input of full 20-step trajectories of held-out prompts (mean SNR gated per mode:
``SNR_MEAN_MIN_DB``; the worst reported), and prompt-following by ``sd_keras.evaluate`` for the shapes model (a
bundle more than ``MAX_ACCURACY_DROP`` below Keras on colour, shape or background is refused) or, for other
models, CLIP-free image statistics against the Keras images of the same prompts and seeds.

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


# SDXL's second text encoder: its Keras outputs by the bundle's output names
ENCODER_2_OUTPUTS = {"context": "hidden_states", "pooled": "pooled"}
_OUTPUT_NAMES = {"text_encoder": "context", "text_encoder_2": "context", "diffusion_model": "model_output",
                 "decoder": "image", "image_encoder": "latent"}


def export_graphs(models):
    """``{component: keras.Model}`` as the bundle's signatures compute them: the SDXL UNet from
    ``added_embedding`` (``unet_parts.export_unet``, same layers and weights); the other models unchanged."""
    from sd_keras.export import unet_parts

    graphs = dict(models)
    if graphs.get("diffusion_model") is not None:
        graphs["diffusion_model"] = unet_parts.export_unet(graphs["diffusion_model"])
    return graphs


def component_outputs(model, component, feed):
    """``{output name: float32 array}`` of a Keras component (an ``export_graphs`` model) on one feed."""
    if component in ("text_encoder", "text_encoder_2", "diffusion_model"):
        out = model.predict_on_batch(feed)
    else:
        (value,) = feed.values()
        out = model.predict_on_batch(value)
    if isinstance(out, dict):
        return {name: np.asarray(out[key], np.float32) for name, key in ENCODER_2_OUTPUTS.items()}
    return {_OUTPUT_NAMES[component]: np.asarray(out, np.float32)}


def _keras_output(model, component, feed):
    """The Keras component's outputs on ``feed``, flattened and concatenated in the bundle's output order (one
    array; SDXL's second text encoder has two outputs, ``context`` and ``pooled``)."""
    return _joined(component_outputs(model, component, feed))


def _joined(outputs, names=None):
    """One array of a component's outputs: the only one as it is, several flattened and concatenated."""
    names = list(outputs) if names is None else names
    if len(names) == 1:
        return np.asarray(outputs[names[0]], np.float32)
    return np.concatenate([np.asarray(outputs[name], np.float32).reshape(-1) for name in names])


def _keras_models(model):
    """``{component: Keras model}`` of a pipeline as the bundle's signatures compute them."""
    return export_graphs({name: getattr(model, name, None) for name in
                          ("text_encoder", "text_encoder_2", "diffusion_model", "decoder", "image_encoder")})


def compare_component(model, component, path, entry, feeds, *, threads=2, references=None, call_seconds=None):
    """Run the ``.tflite`` at ``path`` and the Keras ``model`` on each feed; the worst metrics over the feeds.
    ``references``: the Keras outputs of the feeds computed earlier (``_keras_output``); ``model`` is then not
    used (None). ``call_seconds``: a list that gets the wall time of each interpreter call."""
    from sd_keras.export.bundle import ExportError
    from sd_keras.export.runner import open_signature

    output_names = [spec["name"] for spec in entry["outputs"]]
    results = []
    try:
        runner = open_signature(path, entry, threads)
        for index, feed in enumerate(feeds):
            feed = {spec["name"]: np.asarray(feed[spec["name"]], spec["dtype"]) for spec in entry["inputs"]}
            start = time.perf_counter()
            outputs = runner(**feed)
            if call_seconds is not None:
                call_seconds.append(time.perf_counter() - start)
            candidate = _joined(outputs, output_names)
            reference = _keras_output(model, component, feed) if references is None else references[index]
            results.append(metrics(reference, candidate))
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


def parity_feeds(feeds, max_samples):
    """The recorded feeds a parity check uses: up to ``max_samples``, evenly picked."""
    return [feeds[i] for i in sorted(set(np.linspace(0, len(feeds) - 1, min(max_samples, len(feeds)))
                                         .round().astype(int)))]


def keras_references(model, signatures, records, *, max_samples=6, end_to_end_settings=None, image_size=None):
    """Everything ``evaluate`` needs from the Keras model, computed before a bundle exists: the outputs of each
    component on its parity feeds and the end-to-end reference image. With these, a bundle is checked by a
    process that does not hold the model (``export_bundle`` on a model spec).

    Args:
        signatures: ``{component: {"inputs": [spec, ...], ...}}`` of the components to check (manifest entries
            or ``litert.component_signatures``): the feeds are given to Keras as the bundle's inputs are.

    Returns:
        ``{"parity": {component: [output, ...]}, "end_to_end": uint8 image or None}``.
    """
    keras_models = _keras_models(model)
    parity = {component: [_keras_output(keras_models[component], component,
                                        {spec["name"]: np.asarray(feed[spec["name"]], spec["dtype"])
                                         for spec in entry["inputs"]})
                          for feed in parity_feeds(records[component], max_samples)]
              for component, entry in signatures.items()}
    image = None
    if end_to_end_settings is not None:
        height, width = image_size or model.config.image_size
        image = model.text_to_image(end_to_end_settings["prompt"], **_image_settings(end_to_end_settings, height,
                                                                                     width))
    return {"parity": parity, "end_to_end": None if image is None else np.asarray(image)}


def _image_settings(settings, height, width):
    return dict(num_steps=settings["num_steps"], unconditional_guidance_scale=settings["guidance_scale"],
                seed=settings["seed"], sampler=settings["sampler"], height=height, width=width)


def evaluate(model, bundle_path, manifest, records, mode, *, random_weights, threads=2, latency_runs=3,
             max_samples=6, end_to_end_settings=None, references=None, check_workers=1):
    """Measure and gate a written bundle; the report dict (``report["passed"]`` tells).

    Args:
        model: the source ``StableDiffusion`` (Keras), or None with ``references``.
        references: ``keras_references`` of the model for these records and settings (computed earlier, maybe
            by another process); default: computed here from ``model``.
        bundle_path: the bundle folder (its manifest already written).
        manifest: the manifest dict.
        records: ``{component: [feed, ...]}`` recorded from real trajectories (``quantize.record_trajectories``).
        mode: the quantization mode, or ``{component: mode}`` (``quantize.parse_spec``).
        random_weights: True when the weights are random (image gates of quantized modes are not enforced).
        max_samples: parity feeds per component (evenly picked from the records).
        latency_runs: timed interpreter calls per component after a warm-up call; 0 measures no latency apart
            from the parity check's own calls (the report gives the first one's time, ``first_call_ms``): what
            keeps a check of int16-activation files (LiteRT's reference kernels, minutes per call at SDXL
            sizes) to one call per component.
        check_workers: components checked side by side (threads; the interpreter releases the GIL while it
            runs). Worth it where each interpreter keeps one core busy (the int16 reference kernels); each
            component's memory is then held at once, and latencies are measured beside another check.
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
    if references is None:
        references = keras_references(model, manifest["components"], records, max_samples=max_samples,
                                      end_to_end_settings=end_to_end_settings, image_size=manifest["image_size"])

    def check(component):
        entry = manifest["components"][component]
        path = bundle_path if "parts" in entry else os.path.join(bundle_path, entry["file"])
        files = [os.path.join(bundle_path, part["file"]) for part in entry.get("parts", [entry])]
        picked = parity_feeds(records[component], max_samples)
        call_seconds = []
        parity = compare_component(None, component, path, entry, picked, threads=threads,
                                   references=references["parity"][component], call_seconds=call_seconds)
        if latency_runs:
            latency = measure_latency(path, entry, picked[0], runs=latency_runs, threads=threads)
        else:
            latency = {"first_call_ms": call_seconds[0] * 1000.0, "runs": 0, "threads": threads,
                       "delegate": "XNNPACK"}
        return {
            "files": [os.path.basename(file) for file in files], "size_bytes": sum(map(os.path.getsize, files)),
            "quantization": entry["quantization"], "parity": parity, "latency": latency,
            "gates": check_gates(parity, GATES[plan[component]]["component"]),
            **{fact: entry[fact] for fact in quantize.FILE_FACTS if fact in entry},
        }

    if check_workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(check_workers) as pool:
            checked = list(pool.map(check, present))
    else:
        checked = [check(component) for component in present]
    report["components"] = dict(zip(present, checked))
    report["total_size_bytes"] = sum(entry["size_bytes"] for entry in report["components"].values())
    if end_to_end_settings is not None:
        runner = BundleRunner(bundle_path, num_threads=threads)
        settings = _image_settings(end_to_end_settings, *runner.image_size)
        candidate = runner.text_to_image(end_to_end_settings["prompt"], **settings)
        result = {key: end_to_end_settings[key] for key in ("prompt", "seed", "sampler", "num_steps",
                                                            "guidance_scale")}
        result.update(image_metrics(references["end_to_end"], candidate))
        enforced = not random_weights or all(mode in WEIGHT_INDEPENDENT_IMAGE_GATES for mode in modes)
        result["gates"] = [dict(gate, enforced=enforced) for gate in check_gates(result, image)]
        report["end_to_end"] = result
    report["failures"] = failures(report)
    report["passed"] = not report["failures"]
    return report


# -- quality gates: what a user sees -------------------------------------------------------------------------
# Every component is compared with Keras on inputs recorded from full-length trajectories of several held-out
# prompts (every UNet call of every step); the mean SNR per component is gated, the worst is reported (a NaN
# fails). Floors per mode, from the trained shapes model's 20-step DDIM trajectories
# (benchmarks/results/export_shapes_quality.json: the lowest mean among its components was fp32 93.6,
# fp16 93.6, int8 32.0, int8-full 19.1, w8a16 34.2, int4 14.2 dB).
GATE_SAMPLER = "DDIM KerasCV"  # deterministic: no per-step noise to amplify small differences
GATE_STEPS = 20
GATE_PROMPTS = 8  # trajectories recorded for the SNR and image-statistics gates (trained weights)
RANDOM_WEIGHTS_GATE_PROMPTS = 2  # random weights: the gates check the conversion only
SNR_MEAN_MIN_DB = {"fp32": 60.0, "fp16": 50.0, "int8": 25.0, "int8-full": 15.0, "w8a16": 25.0, "int4": 10.0}
# SNR floors that hold whatever the weights (quantized modes' floors need trained weights: a random UNet
# driven with guidance amplifies any perturbation along a trajectory).
WEIGHT_INDEPENDENT_SNR_GATES = ("fp32", "fp16")
# Prompt-following (models sd_keras.evaluate can judge: the shapes model): the bundle's accuracy on each of
# these may fall at most MAX_ACCURACY_DROP (a fraction: 0.05 = 5 points) below the Keras model's.
PROMPT_FOLLOWING_KEYS = ("single_color", "single_shape", "single_background")
MAX_ACCURACY_DROP = 0.05
EVALUATE_SINGLE, EVALUATE_DOUBLE = 24, 8
# CLIP-free image statistics (other models): per image, the bundle's channel means and contrast against the
# Keras image of the same prompt and seed.
IMAGE_STATISTICS_GATES = {"max_mean_level_diff": ("<=", 12.0), "min_contrast_ratio": (">=", 0.8),
                          "max_contrast_ratio": ("<=", 1.25)}


def snr_db(reference, candidate):
    """``10 log10(sum(reference^2) / sum((candidate - reference)^2))`` in float64; NaN when the candidate is not
    finite, ``MAX_PSNR_DB`` when identical.

    Example:
        >>> snr_db(np.ones(4), np.ones(4) * 1.1)
        20.0
    """
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"output shapes differ: {reference.shape} vs {candidate.shape}")
    if not np.all(np.isfinite(candidate)):
        return float("nan")
    power, noise = float(np.sum(reference ** 2)), float(np.sum((candidate - reference) ** 2))
    if noise == 0:
        return MAX_PSNR_DB
    if power == 0:
        return 0.0
    return round(min(MAX_PSNR_DB, 10.0 * math.log10(power / noise)), 6)


def gate_prompts(count):
    """``count`` held-out prompts of the shapes data set (captions the training split never shows), spread over
    colours, shapes and one-/two-object scenes."""
    from sd_keras import evaluate as evaluate_lib

    if count < 1:
        raise ValueError(f"gate prompts must be at least 1, got {count}")
    scenes = evaluate_lib.heldout_scenes(EVALUATE_SINGLE, EVALUATE_DOUBLE)
    return [scene.caption for scene in scenes[::max(1, len(scenes) // count)]][:count]


def keras_outputs(model, records):
    """The Keras model's output for every recorded feed: ``{component: [array, ...]}``."""
    keras_models = _keras_models(model)
    return {component: [_keras_output(keras_models[component], component, feed) for feed in feeds]
            for component, feeds in records.items() if feeds and keras_models.get(component) is not None}


def component_snr(bundle_path, records, references, *, threads=2):
    """SNR of each bundle component against the Keras ``references`` on every recorded feed:
    ``{component: {"worst_db", "mean_db", "inputs"}}`` (NaN when any output is not finite)."""
    from sd_keras.export.bundle import read_bundle
    from sd_keras.export.runner import _Component

    bundle = read_bundle(bundle_path)
    result = {}
    for component, feeds in records.items():
        if not bundle.has(component) or component not in references:
            continue
        run = _Component(bundle, component, threads)
        names = [spec["name"] for spec in run.entry["outputs"]]
        values = [snr_db(reference, _joined(run.outputs(**feed), names))
                  for feed, reference in zip(feeds, references[component])]
        finite = all(math.isfinite(value) for value in values)
        result[component] = {"worst_db": round(float(np.min(values)), 2) if finite else float("nan"),
                             "mean_db": round(float(np.mean(values)), 2) if finite else float("nan"),
                             "inputs": len(values)}
    return result


def snr_gates(snr, plan, *, random_weights):
    """Per component: the mean-SNR floor of its mode (``SNR_MEAN_MIN_DB``) and a finite worst case, each with
    ``enforced`` (False for quantized modes of random weights)."""
    gates = {}
    for component, values in snr.items():
        mode = plan[component]
        enforced = not random_weights or mode in WEIGHT_INDEPENDENT_SNR_GATES
        checks = check_gates({"mean_db": values["mean_db"], "worst_db": values["worst_db"]},
                             {"mean_db": (">=", SNR_MEAN_MIN_DB[mode]), "worst_db": (">=", -MAX_PSNR_DB)})
        gates[component] = [dict(gate, enforced=enforced or gate["metric"] == "worst_db") for gate in checks]
    return gates


def image_statistics(reference_images, candidate_images):
    """CLIP-free statistics of the candidate images against the reference images of the same prompts and seeds
    (uint8 (N, H, W, 3)): per image the largest difference of a channel mean (levels) and the ratio of the
    pixel standard deviations (contrast); the worst over the images, and the mean level difference."""
    reference = np.asarray(reference_images, np.float64)
    candidate = np.asarray(candidate_images, np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"image batches differ: {reference.shape} vs {candidate.shape}")
    level = np.abs(candidate.mean(axis=(1, 2)) - reference.mean(axis=(1, 2))).max(axis=-1)
    ratio = (candidate.std(axis=(1, 2, 3)) + 1.0) / (reference.std(axis=(1, 2, 3)) + 1.0)
    if not (np.all(np.isfinite(level)) and np.all(np.isfinite(ratio))):
        return {"max_mean_level_diff": float("nan"), "min_contrast_ratio": float("nan"),
                "max_contrast_ratio": float("nan"), "mean_level_diff": float("nan"), "images": len(reference)}
    return {"max_mean_level_diff": round(float(level.max()), 3), "min_contrast_ratio": round(float(ratio.min()), 4),
            "max_contrast_ratio": round(float(ratio.max()), 4), "mean_level_diff": round(float(level.mean()), 3),
            "images": len(reference)}


def prompt_following(model, scenes, *, num_steps=GATE_STEPS, sampler=GATE_SAMPLER, image_size=None):
    """``sd_keras.evaluate`` on ``scenes`` at ``image_size`` (default the model's): (``{measure: accuracy}``,
    seconds). The Keras model and a bundle are judged at the bundle's size: a model drawn at another size than
    its native one follows its prompts less well, whatever the bundle."""
    from sd_keras import evaluate as evaluate_lib

    report = evaluate_lib.evaluate(model, scenes, num_steps=num_steps, sampler=sampler, image_size=image_size)
    return {key: value["accuracy"] for key, value in report["summary"].items()}, report["seconds"]


def accuracy_drops(keras_accuracy, accuracy, max_drop=MAX_ACCURACY_DROP):
    """The ``PROMPT_FOLLOWING_KEYS`` on which ``accuracy`` is more than ``max_drop`` below ``keras_accuracy``,
    as readable text (empty: the bundle keeps the prompt)."""
    return [f"{key} {accuracy[key]:.3f} vs Keras {keras_accuracy[key]:.3f}" for key in PROMPT_FOLLOWING_KEYS
            if accuracy.get(key) is not None and keras_accuracy.get(key) is not None
            and accuracy[key] < keras_accuracy[key] - max_drop - 1e-9]


def quality_reference(model, *, prompts=GATE_PROMPTS, num_steps=GATE_STEPS, sampler=GATE_SAMPLER,
                      image_size=None, evaluate_prompts=None, log=None):
    """What the quality gates compare a bundle with, computed once per model (reusable across exports).

    Args:
        model: the Keras ``StableDiffusion``.
        prompts: number of held-out prompts (``gate_prompts``) whose full trajectories (prompt ``k`` with seed
            ``k``) give the component inputs, or a list of prompts.
        num_steps, sampler: the trajectories' and prompt-following's settings (deterministic sampler).
        image_size: (height, width); default the model's native size.
        evaluate_prompts: ``(single, double)`` held-out prompts for prompt-following (None: no
            prompt-following gate).

    Returns:
        ``{"prompts", "num_steps", "sampler", "records", "image_size", "references", "images", "scenes",
        "keras_prompt_following", "keras_evaluate_seconds"}``.
    """
    from sd_keras.export import quantize

    prompts = gate_prompts(prompts) if isinstance(prompts, int) else list(prompts)
    if not prompts:
        raise ValueError("quality gates need at least one prompt")
    if num_steps < 1:
        raise ValueError(f"gate steps must be at least 1, got {num_steps}")
    say = log or (lambda message: None)
    say(f"quality gates: recording {len(prompts)} trajectories of {num_steps} steps ({sampler})")
    records = quantize.record_trajectories(model, prompts=prompts, num_steps=num_steps, sampler=sampler,
                                           image_size=image_size)
    references = keras_outputs(model, records)
    from sd_keras.export.runner import to_uint8

    images = to_uint8(np.concatenate([feed["image"] for feed in records["image_encoder"][:len(prompts)]]))
    reference = {"prompts": prompts, "num_steps": num_steps, "sampler": sampler, "records": records,
                 "image_size": list(image_size or model.config.image_size),
                 "references": references, "images": images, "scenes": None,
                 "keras_prompt_following": None, "keras_evaluate_seconds": None}
    if evaluate_prompts is not None:
        from sd_keras import evaluate as evaluate_lib

        single, double = evaluate_prompts
        if single < 1 or double < 0:
            raise ValueError(f"prompt-following needs at least 1 one-object prompt, got {single}/{double}")
        reference["scenes"] = evaluate_lib.heldout_scenes(single, double)
        say(f"quality gates: prompt-following of the Keras model on {single}+{double} held-out prompts")
        reference["keras_prompt_following"], reference["keras_evaluate_seconds"] = prompt_following(
            model, reference["scenes"], num_steps=num_steps, sampler=sampler,
            image_size=reference["image_size"])
    return reference


def quality_gates(bundle_path, plan, reference, *, random_weights, max_accuracy_drop=MAX_ACCURACY_DROP,
                  threads=2, log=None):
    """Judge a written bundle against ``quality_reference``: the ``quality`` section of the report.

    Gates run: ``component_snr`` (always), ``prompt_following`` (when the reference has prompt-following
    scenes), else ``image_statistics`` (the bundle runner's images against the Keras images of the same
    prompts and seeds). A gate with ``enforced: false`` is reported only (random weights).
    """
    from sd_keras.export.runner import BundleRunner

    say = log or (lambda message: None)
    quality = {"sampler": reference["sampler"], "num_steps": reference["num_steps"],
               "prompts": list(reference["prompts"]), "gates_run": ["component_snr"]}
    say("quality gates: component SNR over full trajectories")
    snr = component_snr(bundle_path, reference["records"], reference["references"], threads=threads)
    gates = snr_gates(snr, plan, random_weights=random_weights)
    quality["component_snr"] = {component: {**values, "gates": gates[component]} for component, values in snr.items()}
    failed = [f"{component} SNR {gate['metric'].replace('_db', '')} {gate['value']} dB (needs {gate['op']} "
              f"{gate['threshold']})" for component, items in gates.items() for gate in items
              if not gate["passed"] and gate["enforced"]]
    runner = BundleRunner(bundle_path, num_threads=threads)
    if reference["scenes"] is not None:
        quality["gates_run"].append("prompt_following")
        say(f"quality gates: prompt-following of the bundle on {len(reference['scenes'])} held-out prompts")
        accuracy, seconds = prompt_following(runner, reference["scenes"], num_steps=reference["num_steps"],
                                             sampler=reference["sampler"], image_size=reference["image_size"])
        drops = accuracy_drops(reference["keras_prompt_following"], accuracy, max_accuracy_drop)
        quality["prompt_following"] = {
            "prompts": len(reference["scenes"]), "max_accuracy_drop": max_accuracy_drop,
            "keys": list(PROMPT_FOLLOWING_KEYS), "keras": reference["keras_prompt_following"],
            "bundle": accuracy, "keras_seconds": reference["keras_evaluate_seconds"], "bundle_seconds": seconds,
            "passed": not drops}
        failed += [f"prompt-following {drop} (more than {max_accuracy_drop * 100:g} points below)" for drop in drops]
    else:
        quality["gates_run"].append("image_statistics")
        say("quality gates: image statistics over the gate prompts")
        images = np.stack([np.asarray(runner.text_to_image(
            prompt, num_steps=reference["num_steps"], seed=index, sampler=reference["sampler"],
            unconditional_guidance_scale=7.5))[0] for index, prompt in enumerate(reference["prompts"])])
        statistics = image_statistics(reference["images"], images)
        enforced = not random_weights or all(mode in WEIGHT_INDEPENDENT_SNR_GATES for mode in plan.values())
        checks = [dict(gate, enforced=enforced) for gate in check_gates(statistics, IMAGE_STATISTICS_GATES)]
        quality["image_statistics"] = {**statistics, "gates": checks}
        failed += [f"image statistics {gate['metric']} {gate['value']} (needs {gate['op']} {gate['threshold']})"
                   for gate in checks if not gate["passed"] and gate["enforced"]]
    quality["failures"] = failed
    quality["passed"] = not failed
    return quality


def quality_summary(quality):
    """The manifest's ``quality_gates``: which gates ran and their headline numbers."""
    summary = {"passed": quality["passed"], "gates_run": list(quality["gates_run"]), "sampler": quality["sampler"],
               "num_steps": quality["num_steps"], "prompts": len(quality["prompts"]),
               "component_snr_db": {component: {"worst": values["worst_db"], "mean": values["mean_db"]}
                                    for component, values in quality["component_snr"].items()}}
    if "prompt_following" in quality:
        section = quality["prompt_following"]
        summary["prompt_following"] = {key: {"bundle": section["bundle"][key], "keras": section["keras"][key]}
                                       for key in section["keys"]}
    if "image_statistics" in quality:
        summary["image_statistics"] = {key: value for key, value in quality["image_statistics"].items()
                                       if key != "gates"}
    return summary
