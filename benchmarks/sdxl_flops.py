"""The floating-point work of SDXL's programs, counted by XLA, against the measured H200 times.

What it measures: XLA's HLO cost analysis (``jax.jit(f).lower(...).cost_analysis()``, the program before the
backend's optimisation passes; the same on every backend) of the programs sd_keras runs for SDXL base shapes
(``sd-xl``, bfloat16 weights and compute as the GPU benchmark; the VAE in float32 as the pipeline runs it):

- the UNet forward at 1024x1024 (latent 128x128x4, context 77x2048, ``text_embeds`` and ``time_ids``) at batch 2
  (one classifier-free-guidance step of one image) and batch 8 (one step of four images);
- the VAE decoder at batch 1 and 4; each text encoder at batch 1 (one prompt; the empty negative prompt of the
  base model is zeros, not encoded).

The models are built inside a ``keras.StatelessScope`` that leaves their variables uninitialised, and lowered
with ``stateless_call`` on ``jax.ShapeDtypeStruct`` inputs and variables: no weight is allocated (the process
stays under 1 GB). The counts are then set against ``benchmarks/results/gpu_bench_sdxl_h200_bf16.json`` (and the
float32-master-weight run ``gpu_bench_sdxl_h200.json``) and the H200's dense BF16 tensor-core peak: achieved
TFLOPS and share of the peak of the denoising step, and the share that each speed target, and diffusers +
torch.compile's measured times, would need.

    KERAS_BACKEND=jax python benchmarks/sdxl_flops.py             # writes benchmarks/results/sdxl_flops.json
    KERAS_BACKEND=jax python benchmarks/sdxl_flops.py --smoke     # tiny-xl at 64x64 in seconds: checks the script

Result (SDXL base, 1024x1024): one UNet step on the guidance pair is 13.56 TFLOP (99.7 % of it in matrix products
and convolutions); the measured 34.2 ms per step is 397 TFLOPS, 40 % of the 989 TFLOPS peak. The 0.74 s batch-1
target needs 22.1 ms per step, 62 % of the peak (3.4 s at batch 4: 52 %); diffusers + torch.compile's 1.10 s
corresponds to 40 %, as ours.

"bytes accessed" is the sum over the unfused HLO operations of what each reads and writes: an upper bound on
memory traffic, not a measurement of it. Not a test.
"""

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MEASURED = {"bfloat16": "gpu_bench_sdxl_h200_bf16.json", "float32_master_weights": "gpu_bench_sdxl_h200.json"}

# NVIDIA H200 Tensor Core GPU datasheet (and the H100 SXM datasheet, the same compute): BF16 Tensor Core 1,979
# TFLOPS "with sparsity"; dense matrix products get half of it.
PEAK_BF16_DENSE_TFLOPS = 989.0

# diffusers fp16 + torch.compile of the UNet, the same work on the same card kind (H200, measured 2026-12-04 by
# gpu_bench_sdxl.py's ``compile`` part, as README.md's SDXL table reports; that run's JSON is not kept here).
DIFFUSERS_COMPILE_SECONDS = {"batch1": 1.10, "batch4": 4.05}

FULL = dict(preset="sd-xl", size=1024, batches=(1, 4))
SMOKE = dict(preset="tiny-xl", size=64, batches=(1, 4))


def _config(preset):
    from sd_keras.config_sdxl import get_sdxl_config
    from sd_keras.pipeline_sdxl import TINY_PRESETS, tiny_xl_config

    return tiny_xl_config(preset) if preset in TINY_PRESETS else get_sdxl_config(preset)


def _abstract(variable):
    import jax

    return jax.ShapeDtypeStruct(tuple(variable.shape), variable.dtype)


def _build_abstract(component, config, dtype):
    """``component`` of ``config`` with uninitialised variables: shapes and dtypes only, no weight memory."""
    import keras

    from sd_keras import models

    with keras.StatelessScope(initialize_variables=False):
        return models.build(component, config, dtype)


def cost(model, inputs):
    """XLA's cost analysis of ``model``'s forward on ``inputs`` (name -> ``jax.ShapeDtypeStruct``)."""
    import jax
    import keras

    trainable = [_abstract(v) for v in model.trainable_variables]
    non_trainable = [_abstract(v) for v in model.non_trainable_variables]

    def forward(trainable, non_trainable, inputs):
        return model.stateless_call(trainable, non_trainable, inputs)[0]

    # a model of one input (the decoder) takes the tensor itself, not a dict naming it
    arguments = inputs if isinstance(model.input, dict) else next(iter(inputs.values()))
    # stateless_call's own scope, when outermost, initialises every deferred variable on exit (the weights this
    # script never allocates); inside an outer scope it does not
    with keras.StatelessScope(initialize_variables=False):
        analysis = jax.jit(forward).lower(trainable, non_trainable, arguments).cost_analysis()
        products = _product_flops(jax.make_jaxpr(forward)(trainable, non_trainable, arguments).jaxpr)
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis  # older JAX: one per device
    parameters = sum(_size(v.shape) for v in model.weights)
    return {"flops": float(analysis["flops"]), "transcendentals": float(analysis.get("transcendentals", 0.0)),
            "bytes_accessed": float(analysis["bytes accessed"]), "matmul_conv_flops": products,
            "parameters": parameters, "inputs": {name: list(spec.shape) for name, spec in inputs.items()}}


def _product_flops(jaxpr):
    """FLOPs of the matrix products and convolutions in ``jaxpr`` (2 per multiply-add): the work tensor cores
    can do. Convolutions count the taps on the zero padding too, which XLA's count leaves out."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * _size(eqn.outvars[0].aval.shape) * _size(lhs[d] for d in contracting)
        elif name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, spatial...)
            taps = _size(kernel[d] for d in spec[1:])
            total += 2.0 * _size(eqn.outvars[0].aval.shape) * taps
        for value in eqn.params.values():
            for inner in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(inner, "jaxpr", inner)  # a ClosedJaxpr holds its Jaxpr
                if hasattr(inner, "eqns"):
                    total += _product_flops(inner)
    return total


def _size(shape):
    size = 1
    for dim in shape:
        size *= int(dim)
    return size


def count(preset, size, batches):
    """FLOPs and bytes of every program of one generation, per call, components built one at a time."""
    import jax
    import keras

    from sd_keras import loop

    config = _config(preset)
    compute = loop.keras_dtype_policy("bfloat16")
    latent_size = size // 8
    spec = jax.ShapeDtypeStruct
    results = {}

    unet = _build_abstract("diffusion_model", config, compute)
    timestep_dim = int(unet.input["timestep_embedding"].shape[-1])
    for batch in batches:
        pair = 2 * batch  # the loop runs the unconditional and conditional rows together
        inputs = {"latent": spec((pair, latent_size, latent_size, config.unet.in_channels), "float32"),
                  "timestep_embedding": spec((pair, timestep_dim), "float32"),
                  "context": spec((pair, config.text_encoder_2.max_length, config.unet.context_dim), "float32"),
                  "text_embeds": spec((pair, config.unet.pooled_dim), "float32"),
                  "time_ids": spec((pair, config.unet.num_time_ids), "float32")}
        results[f"unet_batch{pair}"] = cost(unet, inputs)
        _report(f"UNet, batch {pair} (one step of {batch} image(s))", results[f"unet_batch{pair}"])
    del unet

    decoder = _build_abstract("decoder", config, None)  # float32, as the pipeline builds it
    for batch in batches:
        inputs = {"latent": spec((batch, latent_size, latent_size, config.vae.latent_channels), "float32")}
        results[f"vae_decoder_batch{batch}"] = cost(decoder, inputs)
        _report(f"VAE decoder, batch {batch}", results[f"vae_decoder_batch{batch}"])
    del decoder

    for name in ("text_encoder", "text_encoder_2"):
        encoder = _build_abstract(name, config, compute)
        length = getattr(config, name).max_length
        inputs = {"tokens": spec((1, length), "int32"), "positions": spec((1, length), "int32")}
        results[f"{name}_batch1"] = cost(encoder, inputs)
        _report(f"{name}, batch 1", results[f"{name}_batch1"])
        del encoder
    keras.backend.clear_session()
    return results


def _report(label, entry):
    print(f"{label}: {entry['flops'] / 1e12:.3f} TFLOP ({entry['matmul_conv_flops'] / 1e12:.3f} in matrix products "
          f"and convolutions), {entry['bytes_accessed'] / 1e9:.1f} GB accessed (unfused), "
          f"{entry['parameters'] / 1e6:.1f} M parameters", flush=True)


def _utilization(flops, seconds):
    tflops = flops / seconds / 1e12
    return {"seconds": seconds, "tflops": tflops, "fraction_of_peak": tflops / PEAK_BF16_DENSE_TFLOPS}


def combine(flops, measured, steps):
    """Achieved and required utilization of the UNet step, from the counted FLOPs and the measured seconds.

    The per-step time is the denoising loop's time divided by the steps (the UNet on the guidance pair and the
    Euler update). Batch 4's components were not timed: its per-step time assumes the text encoders take batch
    1's time (one prompt) and the VAE decode four times batch 1's.
    """
    analysis = {}
    primary = measured["bfloat16"]["sd_keras"]
    parts = primary["components"]
    text_s = parts["text_encoders_s"]
    vae_s = {1: parts["vae_decode_s"], 4: 4 * parts["vae_decode_s"]}
    step_flops = {1: flops["unet_batch2"]["flops"], 4: flops["unet_batch8"]["flops"]}

    for run, data in measured.items():
        per_step = data["sd_keras"]["components"]["loop_per_step_s"]
        analysis[f"unet_step_batch2_{run}"] = _utilization(step_flops[1], per_step)
    generation_flops = {batch: steps * step_flops[batch] + flops[f"vae_decoder_batch{batch}"]["flops"]
                        + flops["text_encoder_batch1"]["flops"] + flops["text_encoder_2_batch1"]["flops"]
                        for batch in (1, 4)}
    for batch in (1, 4):
        total = primary[f"batch{batch}"]["seconds"]
        per_step = (total - text_s - vae_s[batch]) / steps
        analysis[f"generation_batch{batch}"] = {**_utilization(generation_flops[batch], total),
                                                "flops": generation_flops[batch]}
        if batch == 4:
            analysis["unet_step_batch8_estimated"] = _utilization(step_flops[4], per_step)
        target = measured["bfloat16"]["targets"][f"batch{batch}"]
        analysis[f"target_batch{batch}"] = {
            "generation_s": target, "non_unet_s": text_s + vae_s[batch],
            **_utilization(step_flops[batch], (target - text_s - vae_s[batch]) / steps)}
        # diffusers' text encoders and float32 VAE decode are taken to cost what ours do (not timed apart)
        compiled = DIFFUSERS_COMPILE_SECONDS[f"batch{batch}"]
        analysis[f"diffusers_compile_batch{batch}"] = {
            "generation_s": compiled, "non_unet_s": text_s + vae_s[batch], "assumes_non_unet_time_as_sd_keras": True,
            **_utilization(step_flops[batch], (compiled - text_s - vae_s[batch]) / steps)}
    return analysis


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON path (default: results/sdxl_flops.json; "
                                                    "with --smoke a file in the temporary directory)")
    parser.add_argument("--smoke", action="store_true", help="tiny-xl at 64x64: checks the script in seconds")
    args = parser.parse_args()
    cfg = SMOKE if args.smoke else FULL
    out = args.out or (os.path.join(tempfile.gettempdir(), "sdxl_flops_smoke.json") if args.smoke
                       else os.path.join(RESULTS, "sdxl_flops.json"))

    import jax

    start = time.perf_counter()
    flops = count(cfg["preset"], cfg["size"], cfg["batches"])
    measured = {}
    for run, name in MEASURED.items():
        with open(os.path.join(RESULTS, name)) as f:
            measured[run] = json.load(f)
    steps = measured["bfloat16"]["steps"]
    results = {"date": time.strftime("%Y-%m-%d"), "preset": cfg["preset"], "size": cfg["size"], "steps": steps,
               "smoke": args.smoke, "jax": jax.__version__, "counted_by": "jax.jit(...).lower(...).cost_analysis()",
               "peak_bf16_dense_tflops": PEAK_BF16_DENSE_TFLOPS, "measured": MEASURED,
               "diffusers_compile_seconds": DIFFUSERS_COMPILE_SECONDS, "per_call": flops,
               "analysis": combine(flops, measured, steps), "seconds": time.perf_counter() - start}
    if args.smoke:
        results["note"] = "tiny-xl FLOPs against SDXL's measured times: checks the script, the figures mean nothing"
    for key, entry in results["analysis"].items():
        print(f"{key}: {entry['seconds'] * 1e3:.1f} ms, {entry['tflops']:.0f} TFLOPS, "
              f"{100 * entry['fraction_of_peak']:.1f} % of peak", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(out + ".tmp", out)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
