"""Export an AI upscaler (the compact SRVGGNet for phones, or any RRDBNet) to LiteRT, with a parity gate.

The model runs on a fixed ``tile x tile`` input (``image``, float32 RGB in [0, 1], NHWC) and returns ``upscaled``
(``scale*tile`` square); the app tiles larger images with the grid and feather weights of ``sd_keras.tiling``
(ported to ``android_demo/core``'s ``Tiling.kt``). One ``.tflite`` per mode:

- ``fp16``: float16 weights, float32 maths on the CPU (XNNPACK);
- ``int8``: int8 weights, dynamic-range quantized activations.

Parity gate (``GATES``): each file runs in the LiteRT interpreter on ``GATE_TILES`` test tiles (smooth gradients,
edges, text-like strokes and noise: what photographs and generated images hold) and is compared with the Keras
model on the same tiles as 8-bit images (``round(clip(x, 0, 1) * 255)``): fp16 needs PSNR >= 45 dB and no level
off by more than 4; int8 needs PSNR >= 30 dB. A file that fails is not written; the measured numbers go into the
manifest and the report either way. Random-weight models (tests) are gated the same way: the compact model's
output is the nearest-neighbour enlargement plus a residual, so the numbers stay meaningful.

Output folder (written atomically): ``upscaler_<mode>.tflite`` per mode and ``upscaler.json``::

    {"format": "sd_keras-upscaler", "version": 1, "architecture": "srvgg", "scale": 4, "tile": 128,
     "overlap": 16, "signature": {"signature": "upscale", "inputs": [...], "outputs": [...]},
     "files": {"fp16": "upscaler_fp16.tflite", ...}, "parity": {"fp16": {"psnr_db": ..., ...}}, "gates": {...}}

Converting needs TensorFlow; under another Keras backend ``export_upscaler`` runs itself in a
``KERAS_BACKEND=tensorflow`` subprocess.

Example:
    >>> report = export_upscaler("realesr-general-x4v3.pth", "bundles/upscaler")     # doctest: +SKIP
    >>> report["parity"]["fp16"]["psnr_db"] >= 45                                   # doctest: +SKIP
    True
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from sd_keras import files
from sd_keras.errors import InputError
from sd_keras.export.bundle import ExportError

MODES = ("fp16", "int8")
SIGNATURE = "upscale"
INPUT_NAME, OUTPUT_NAME = "image", "upscaled"
MANIFEST = "upscaler.json"
FORMAT = "sd_keras-upscaler"
DEFAULT_TILE = 128
DEFAULT_OVERLAP = 16
GATE_TILES = 4
# metric -> (comparison, threshold), on 8-bit images of the tiles (Keras = reference)
GATES = {
    "fp16": {"psnr_db": (">=", 45.0), "max_abs_diff": ("<=", 4)},
    "int8": {"psnr_db": (">=", 30.0)},
}

__all__ = ["export_upscaler", "gate_tiles", "signature", "MODES", "GATES", "MANIFEST"]


def signature(tile, scale):
    """The manifest entry of the exported signature for ``tile``-pixel inputs."""
    return {"signature": SIGNATURE,
            "inputs": [{"name": INPUT_NAME, "shape": [1, tile, tile, 3], "dtype": "float32"}],
            "outputs": [{"name": OUTPUT_NAME, "shape": [1, tile * scale, tile * scale, 3], "dtype": "float32"}]}


def gate_tiles(tile, count=GATE_TILES, seed=0):
    """``count`` deterministic test tiles (float32, ``(1, tile, tile, 3)`` in [0, 1]): gradients, hard edges,
    thin strokes and sensor-like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:tile, 0:tile].astype(np.float32) / max(tile - 1, 1)
    tiles = []
    for index in range(count):
        colour = rng.random(3, dtype=np.float32)
        gradient = (x[..., None] * colour + y[..., None] * (1 - colour)) / 2
        edges = ((np.floor(x * (3 + index)) + np.floor(y * (2 + index))) % 2)[..., None] * 0.5
        strokes = (np.abs(np.sin((x + 0.3 * y) * (20 + 7 * index))) < 0.08)[..., None] * 0.4
        image = gradient * 0.6 + edges * 0.3 + strokes + rng.normal(0, 0.02, (tile, tile, 3))
        tiles.append(np.clip(image, 0, 1).astype(np.float32)[None])
    return tiles


def _as_levels(image):
    return np.round(np.clip(np.asarray(image, np.float64), 0, 1) * 255.0)


def _parity(model, path, entry, tiles, threads):
    from sd_keras.export.runner import open_signature
    from sd_keras.export.verify import image_metrics

    runner = open_signature(path, entry, threads)
    reference = np.concatenate([_as_levels(model.predict_on_batch(tile)) for tile in tiles])
    candidate = np.concatenate([_as_levels(runner(**{INPUT_NAME: tile})[OUTPUT_NAME]) for tile in tiles])
    result = image_metrics(reference, candidate)
    result["finite"] = bool(np.all(np.isfinite(candidate)))
    return result


def _failures(mode, measured):
    failed = [] if measured["finite"] else ["non-finite outputs"]
    for metric, (op, threshold) in GATES[mode].items():
        value = measured[metric]
        if not (value >= threshold if op == ">=" else value <= threshold):
            failed.append(f"{metric} {value:.4g} (needs {op} {threshold})")
    return failed


def _check(modes, tile, overlap):
    modes = tuple(dict.fromkeys(modes))
    unknown = [mode for mode in modes if mode not in MODES]
    if not modes or unknown:
        raise InputError(f"upscaler export modes {', '.join(unknown) or '(none)'}: choose from {', '.join(MODES)}")
    if int(tile) != tile or not 16 <= tile <= 1024:
        raise InputError(f"tile {tile}: must be an integer from 16 to 1024")
    if int(overlap) != overlap or not 0 <= overlap < tile // 2:
        raise InputError(f"overlap {overlap}: must be an integer from 0 to tile / 2 - 1 ({tile // 2 - 1})")
    return modes


def _export_here(upscaler_path, output, modes, tile, overlap, threads):
    from sd_keras.export import litert
    from sd_keras.weights.upscalers import load_upscaler

    model = load_upscaler(upscaler_path)
    config = model.upscaler_config
    if tile % config.pad_multiple:
        raise InputError(f"tile {tile}: must be a multiple of {config.pad_multiple} for this pixel-unshuffled model")
    entry = signature(tile, config.scale)
    tiles = gate_tiles(tile)

    def serve(image):
        return {OUTPUT_NAME: model(image, training=False)}

    parity, failures = {}, {}
    with files.atomic_folder(output) as staging:
        for mode in modes:
            path = os.path.join(staging, f"upscaler_{mode}.tflite")
            litert.convert_function(serve, model.weights, "upscaler", entry, mode, path)
            parity[mode] = _parity(model, path, entry, tiles, threads)
            failed = _failures(mode, parity[mode])
            if failed:
                failures[mode] = failed
        manifest = {"format": FORMAT, "version": 1, "architecture": config.architecture, "scale": config.scale,
                    "tile": tile, "overlap": overlap, "pad_multiple": config.pad_multiple, "signature": entry,
                    "files": {mode: f"upscaler_{mode}.tflite" for mode in modes}, "parity": parity,
                    "gates": {mode: {metric: list(gate) for metric, gate in GATES[mode].items()} for mode in modes},
                    "source": os.path.basename(upscaler_path)}
        if failures:
            raise ExportError("upscaler parity gate failed, nothing written: " + "; ".join(
                f"{mode}: {', '.join(failed)}" for mode, failed in failures.items()))
        files.write_json(os.path.join(staging, MANIFEST), manifest)
    return {"output": os.fspath(output), "parity": parity, "files": manifest["files"], "scale": config.scale,
            "tile": tile}


def export_upscaler(upscaler_path, output, *, modes=MODES, tile=DEFAULT_TILE, overlap=DEFAULT_OVERLAP, threads=2):
    """Export the upscaler file ``upscaler_path`` to the folder ``output`` (see the module docstring).

    Returns:
        ``{"output", "parity": {mode: {"psnr_db", "max_abs_diff", "mean_abs_diff", "finite"}}, "files", ...}``.

    Raises:
        InputError: bad modes / tile / overlap, or an unreadable upscaler file.
        ExportError: a mode failed its parity gate (nothing is written) or the conversion failed.
    """
    import keras

    modes = _check(modes, tile, overlap)
    if not os.path.isfile(upscaler_path):
        from sd_keras.weights.upscalers import WHERE_TO_GET

        raise InputError(f"{upscaler_path}: no such upscaler file; {WHERE_TO_GET}")
    if keras.backend.backend() == "tensorflow":
        return _export_here(upscaler_path, output, modes, tile, overlap, threads)
    with tempfile.TemporaryDirectory(prefix="sd_keras_upscaler_") as workdir:
        job = os.path.join(workdir, "job.json")
        result = os.path.join(workdir, "result.json")
        with open(job, "w") as handle:
            json.dump({"upscaler": os.fspath(upscaler_path), "output": os.fspath(output), "modes": list(modes),
                       "tile": tile, "overlap": overlap, "threads": threads, "result": result}, handle)
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
        process = subprocess.run([sys.executable, "-m", "sd_keras.export.upscaler", job], env=env,
                                 capture_output=True, text=True)
        if process.returncode != 0 or not os.path.exists(result):
            tail = "\n".join(process.stderr.strip().splitlines()[-15:])
            raise ExportError(f"upscaler export process failed (exit {process.returncode}):\n{tail}")
        with open(result) as handle:
            outcome = json.load(handle)
    if "error" in outcome:
        error_class = InputError if outcome.get("input_error") else ExportError
        raise error_class(outcome["error"])
    return outcome["report"]


def _run_job(job_path):
    with open(job_path) as handle:
        job = json.load(handle)
    try:
        outcome = {"report": _export_here(job["upscaler"], job["output"], tuple(job["modes"]), job["tile"],
                                          job["overlap"], job["threads"])}
    except (InputError, ExportError) as error:
        outcome = {"error": str(error), "input_error": isinstance(error, InputError)}
    files.write_json(job["result"], outcome)


if __name__ == "__main__":
    _run_job(sys.argv[1])
