"""Quantization quality of the trained demo model: every export mode of ``shapes``, parity and sizes.

Exports the shipped ``shapes`` model (128x128) in each mode with the CLI's defaults and collects, from each
bundle's report: per-component size, cosine / PSNR against Keras on recorded sampling inputs and CPU latency
(LiteRT, XNNPACK, 2 threads), and the end-to-end image PSNR against the Keras pipeline for the same seed (the
gates: fp16 >= 35 dB, int8 >= 25 dB, int8-full >= 25 dB, int4 >= 20 dB).

    KERAS_BACKEND=tensorflow python benchmarks/export_shapes_quality.py \\
        --out benchmarks/results/export_shapes_quality.json

Not a test: it takes a few minutes; latencies depend on the machine.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="export_shapes_quality.json")
    parser.add_argument("--modes", default="fp32,fp16,int8,int8-full,int4")
    args = parser.parse_args(argv)

    from sd_keras.export.bundle import export_bundle, write_json_atomic
    from sd_keras.export.litert import ExportError
    from sd_keras.pipeline import StableDiffusion

    model = StableDiffusion.from_preset("shapes")
    results = {"model": "shapes", "image_size": list(model.config.image_size), "date": time.strftime("%Y-%m-%d"),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores", "modes": {}}
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory(prefix="sd_keras_quality_") as tmp:
            started = time.perf_counter()
            try:
                report = export_bundle(model, os.path.join(tmp, mode), quantization=mode)
            except ExportError as error:
                results["modes"][mode] = {"error": str(error)}
                continue
            entry = {"export_seconds": round(time.perf_counter() - started, 1), "components": {},
                     "end_to_end_psnr_db": round(report["end_to_end"]["psnr_db"], 2),
                     "end_to_end_max_abs_diff": report["end_to_end"]["max_abs_diff"], "passed": report["passed"]}
            for name, component in report["components"].items():
                parity = component["parity"]
                entry["components"][name] = {
                    "size_mb": round(component["size_bytes"] / 1e6, 2), "cosine": round(parity["cosine"], 6),
                    "psnr_db": round(parity["psnr_db"], 1), "latency_ms": round(component["latency"]["median_ms"], 1),
                    **{key: component[key] for key in ("activations", "int8_activations_psnr_db") if key in component}}
            results["modes"][mode] = entry
        print(mode, json.dumps(results["modes"][mode]), flush=True)
    write_json_atomic(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
