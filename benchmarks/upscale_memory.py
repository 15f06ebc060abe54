"""Peak memory and time of tiled AI upscaling on the CPU: what bounds memory is the tile, not the image.

Each case runs in a fresh process (peak resident memory, ``ru_maxrss``, is per process) with random weights of
the real architectures' sizes:

- ``compact``: SRVGGNetCompact as realesr-general-x4v3 (64 features, 32 convolutions, x4), a 512x512 image to
  2048x2048 with the default tiles (192 pixels, 32 shared), and the same image untiled;
- ``rrdbnet``: RRDBNet as RealESRGAN_x4plus (64 features, growth 32, x4) cut to 2 blocks (a block's activations
  are freed before the next, so the peak does not grow with the number of blocks; 23 would take minutes per tile
  on a laptop CPU), one 192x192 tile (768x768 out), then a 512x512 image to 2048x2048 in 192-pixel tiles: the
  two peaks differ by little more than the 2048x2048 output canvas.

    KERAS_BACKEND=jax python benchmarks/upscale_memory.py

Writes ``benchmarks/results/upscale_memory.json``.
"""

import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT = os.path.join(HERE, "results", "upscale_memory.json")
CASES = {
    "compact_512_to_2048_tiled": dict(architecture="srvgg", num_feat=64, num_conv=32, size=512, tile=192),
    "compact_512_to_2048_untiled": dict(architecture="srvgg", num_feat=64, num_conv=32, size=512, tile=0),
    "rrdbnet_2_blocks_one_192_tile": dict(architecture="rrdbnet", num_feat=64, num_block=2, size=192, tile=192),
    "rrdbnet_2_blocks_512_to_2048_tiled": dict(architecture="rrdbnet", num_feat=64, num_block=2, size=512,
                                               tile=192),
}


def run_case(name):
    import numpy as np

    from sd_keras.models.upscalers import UpscalerConfig, build_upscaler
    from sd_keras.upscale import upscale

    case = dict(CASES[name])
    size, tile = case.pop("size"), case.pop("tile")
    config = UpscalerConfig(scale=4, **case)
    model = build_upscaler(config)
    model.upscaler_config = config
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    started = time.perf_counter()
    out = upscale(image, model, tile=tile)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"case": name, "input": f"{size}x{size}", "output": f"{out.shape[1]}x{out.shape[0]}",
                      "tile": tile, "parameters": model.count_params(), "seconds": round(seconds, 1),
                      "peak_rss_gb": round(peak, 2), "rss_before_gb": round(baseline, 2)}))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--case":
        run_case(sys.argv[2])
        return
    results = []
    for name in CASES:
        line = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True,
                              check=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(line))
        print(line, flush=True)
    report = {"backend": os.environ.get("KERAS_BACKEND", "tensorflow"), "machine": platform.processor() or
              platform.machine(), "cpus": os.cpu_count(), "results": results}
    os.makedirs(os.path.dirname(RESULT), exist_ok=True)
    with open(RESULT + ".tmp", "w") as handle:
        json.dump(report, handle, indent=2)
    os.replace(RESULT + ".tmp", RESULT)


if __name__ == "__main__":
    main()
