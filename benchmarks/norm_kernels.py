"""GroupNorm/LayerNorm + SiLU in bfloat16 on the JAX backend: Keras' layers against sd_keras' (both ways of taking
GroupNorm statistics), at the UNet's activation shapes. Each timing is 50 chained calls in one jitted loop.

    KERAS_BACKEND=jax python benchmarks/norm_kernels.py --out benchmarks/results/norm_kernels_h200.json

Prints microseconds per call and writes JSON (device named). Not a test: numbers depend on the device.
"""

import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from sd_keras.models import layers  # noqa: E402

GROUP_SHAPES = [(2, 64, 64, 320), (2, 32, 32, 640), (2, 8, 8, 1280), (16, 64, 64, 320), (16, 32, 32, 640),
                (16, 16, 16, 1280), (16, 64, 64, 960)]
LAYER_SHAPES = [(2, 4096, 320), (16, 4096, 320), (16, 1024, 640)]
CALLS = 50


def _time_loop(layer, shape, repeats):
    x = ops.cast(ops.convert_to_tensor(np.random.default_rng(0).standard_normal(shape).astype("float32")),
                 "bfloat16")

    @jax.jit
    def run(x):
        return jax.lax.fori_loop(0, CALLS, lambda i, v: ops.silu(layer(v)), x)

    run(x).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x).block_until_ready()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / CALLS * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="norm_kernels.json")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results = {"device": jax.devices()[0].device_kind, "date": time.strftime("%Y-%m-%d"), "calls_per_loop": CALLS,
               "unit": "microseconds per norm+SiLU call", "group_norm": {}, "layer_norm": {}}
    for shape in GROUP_SHAPES:
        row = {}
        for label, cls, mode in (("keras", keras.layers.GroupNormalization, None),
                                 ("one_pass", layers.GroupNormalization, "one_pass"),
                                 ("rows", layers.GroupNormalization, "rows")):
            layers.GROUP_STATS = mode or "auto"
            layer = cls(groups=32, epsilon=1e-5, dtype="mixed_bfloat16")
            layer.build(shape)
            row[label] = _time_loop(layer, shape, args.repeats)
        layers.GROUP_STATS = "auto"
        results["group_norm"][str(shape)] = row
        print("GroupNorm", shape, {k: round(v, 1) for k, v in row.items()}, flush=True)
    for shape in LAYER_SHAPES:
        row = {}
        default = layers.LAYER_ONE_PASS_MIN_ROWS
        for label, cls in (("keras", keras.layers.LayerNormalization), ("one_pass", layers.LayerNormalization)):
            layers.LAYER_ONE_PASS_MIN_ROWS = 0  # one pass at every size
            layer = cls(epsilon=1e-5, dtype="mixed_bfloat16")
            layer.build(shape)
            row[label] = _time_loop(layer, shape, args.repeats)
        layers.LAYER_ONE_PASS_MIN_ROWS = default
        results["layer_norm"][str(shape)] = row
        print("LayerNorm", shape, {k: round(v, 1) for k, v in row.items()}, flush=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
