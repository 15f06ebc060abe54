"""The w8a16 decoder at full size, through the exporter's own conversion: the file LiteRT prepares, and its parity.

LiteRT's int16-activation convolution refuses an im2col buffer over 2^31 - 1 elements, which the SDXL decoder's
last block needs at 1024x1024; the exporter keeps those convolutions float (``quantize.INT16_CONV_IM2COL_LIMIT``).
This script exports only the decoder (random weights at the preset's shapes, calibrated on random latents), checks
that LiteRT prepares the file, and runs it once against the Keras decoder with the gates' metrics (the w8a16 gate:
cosine >= 0.98). A full SDXL w8a16 export does the same work for its decoder after hours of UNet conversion and
int16 checks; this measures the decoder alone.

    python benchmarks/w8a16_decoder.py --model sd-xl --size 1024 \\
        --out benchmarks/results/w8a16_decoder_sd-xl_1024.json
    python benchmarks/w8a16_decoder.py --model tiny-xl --size 64 --out /tmp/smoke.json   # checks the script

Not a test: the seconds depend on the machine.
"""

import argparse
import os
import platform
import resource
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sd-xl", help="SDXL preset (or tiny-xl) whose decoder shapes are built")
    parser.add_argument("--size", type=int, default=1024, help="image height and width")
    parser.add_argument("--feeds", type=int, default=1, help="random calibration latents")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import numpy as np

    from sd_keras import files
    from sd_keras.config_sdxl import get_sdxl_config
    from sd_keras.export import litert, quantize, verify
    from sd_keras.models import registry
    from sd_keras.pipeline_sdxl import TINY_PRESETS, tiny_xl_config

    config = tiny_xl_config(args.model) if args.model in TINY_PRESETS else get_sdxl_config(args.model)
    size = (args.size, args.size)
    entry = litert.component_signatures(config, size)["decoder"]
    shape = entry["inputs"][0]["shape"]
    rng = np.random.default_rng(0)
    feeds = [{"latent": rng.standard_normal(shape).astype(np.float32)} for _ in range(args.feeds)]
    result = {"model": f"{args.model} decoder, random weights", "quantization": "w8a16", "image_size": list(size),
              "calibration_feeds": args.feeds, "threads": args.threads,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}

    def save():
        files.write_json(args.out, result)

    start = time.perf_counter()
    decoder = registry.build("decoder", config)
    result["parameters"] = int(sum(int(np.prod(w.shape)) for w in decoder.weights))
    result["build_s"] = round(time.perf_counter() - start, 1)
    with tempfile.TemporaryDirectory(prefix="w8a16_decoder_") as folder:
        start = time.perf_counter()
        facts = litert.export_components({"decoder": decoder}, config, size, "w8a16", folder,
                                         representative={"decoder": feeds}, components=["decoder"])["decoder"]
        result["export_s"] = round(time.perf_counter() - start, 1)
        path = os.path.join(folder, facts["file"])
        result.update(facts={key: facts[key] for key in quantize.FILE_FACTS if key in facts},
                      size_bytes=os.path.getsize(path))
        save()
        from ai_edge_litert.interpreter import Interpreter

        start = time.perf_counter()
        Interpreter(model_path=path, num_threads=args.threads).allocate_tensors()
        result["prepare_s"] = round(time.perf_counter() - start, 2)
        save()
        print("prepared:", result, flush=True)
        start = time.perf_counter()
        parity = verify.compare_component(decoder, "decoder", path, entry, feeds[:1], threads=args.threads)
        result["parity_s"] = round(time.perf_counter() - start, 1)  # the Keras decoder's run and the file's
        result["parity"] = parity
        result["gates"] = verify.check_gates(parity, verify.GATES["w8a16"]["component"])
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    save()
    print(result, flush=True)


if __name__ == "__main__":
    main()
