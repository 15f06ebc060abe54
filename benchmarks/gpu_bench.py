"""GPU benchmark: sd_keras (Keras 3 on JAX, one XLA program per generation) against diffusers on the same card.

Work: SD 1.x shapes with random weights, 512x512, 50 DDIM steps, CFG 7.5, batch 1 and 8; sd_keras in bf16
(float32 scheduler maths), diffusers in fp16, eager and with torch.compile. Also the cold start (first image,
compilation included) in a fresh process with and without a warm persistent compilation cache, per-component
times, the top GPU kernels of one sd_keras generation, and data-parallel throughput over all local GPUs.

    KERAS_BACKEND=jax python benchmarks/gpu_bench.py --out results.json            # everything
    KERAS_BACKEND=jax python benchmarks/gpu_bench.py --parts sd_keras,multi_gpu    # a subset

Prints a table and writes JSON (card named). Not a test: numbers depend on the card.
"""

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

STEPS, SIZE, GUIDANCE = 50, 512, 7.5
PRESET = "sd-v1"  # --smoke switches to the tiny preset on the CPU to check the script itself
TFLOP_PER_IMAGE = 82.8  # UNet 0.80 TFLOP/step x 2 (CFG) x 50 + VAE decode 2.5 (SD 1.5 at 512x512)


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def card_name():
    try:
        import jax

        return jax.devices()[0].device_kind
    except Exception:  # noqa: BLE001
        return "unknown"


def _peak_gib():
    try:
        import jax

        return round((jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0) / 2**30, 2)
    except Exception:  # noqa: BLE001 - a device without memory statistics
        return None


# -- sd_keras ---------------------------------------------------------------------------------------------------
def build_sd_keras(dtype="bfloat16"):
    from sd_keras.pipeline import StableDiffusion

    return StableDiffusion.from_config(PRESET, dtype=dtype)


def bench_sd_keras(repeats, dtype="bfloat16", batches=(1, 8)):
    sd = build_sd_keras(dtype)
    results = {}
    for batch in batches:
        def generate():
            return sd.text_to_image("a photograph of an astronaut riding a horse", batch_size=batch,
                                    num_steps=STEPS, unconditional_guidance_scale=GUIDANCE, seed=0,
                                    sampler="DDIM", height=SIZE, width=SIZE)

        start = time.perf_counter()
        generate()
        first = time.perf_counter() - start
        generate()
        median, times = _median_time(generate, repeats)
        results[f"batch{batch}"] = {"seconds": median, "per_image": median / batch, "first_call": first,
                                    "times": times, "peak_gpu_gib": _peak_gib()}
        print(f"sd_keras {dtype} batch {batch}: {median:.3f} s ({median / batch:.3f} s/image), first {first:.1f} s, "
              f"peak memory so far {results[f'batch{batch}']['peak_gpu_gib']} GiB", flush=True)
    for batch in batches:
        results[f"components_batch{batch}"] = components(sd, repeats, batch)
    results["progress_batch1"] = progress_cost(sd, repeats)
    return sd, results


def progress_cost(sd, repeats, batch=1):
    """Batch-1 generation with the per-step progress report (a host callback inside the loop) on and off."""
    def run(progress=None):
        return sd.text_to_image("a photograph", batch_size=batch, num_steps=STEPS, seed=0, sampler="DDIM",
                                height=SIZE, width=SIZE, progress=progress)

    steps = []
    run(), run(steps.append)
    off, _ = _median_time(run, repeats)
    on, _ = _median_time(lambda: run(steps.append), repeats)
    out = {"batch": batch, "off_s": off, "on_s": on, "overhead": on / off - 1.0, "steps": STEPS}
    print("progress:", {k: round(v, 4) for k, v in out.items()}, flush=True)
    return out


def components(sd, repeats, batch=1):
    """Per-component times: text encoding (one prompt), the 50-step loop and the VAE decode of ``batch`` images."""
    context = sd.encode_text("a photograph")
    sd.encode_text("")
    encode, _ = _median_time(lambda: sd.encode_text("a photograph"), repeats)

    def loop():
        return sd.generate_image(context, batch_size=batch, num_steps=STEPS, seed=0, sampler="DDIM", height=SIZE,
                                 width=SIZE, return_latent=True)

    latent = loop()
    loop_time, _ = _median_time(loop, repeats)
    sd._decode(latent)
    decode, _ = _median_time(lambda: sd._decode(latent), repeats)
    out = {"batch": batch, "encode_text_s": encode, "loop_s": loop_time, "per_step_s": loop_time / STEPS,
           "decode_s": decode}
    print(f"components, batch {batch}:", {k: round(v, 4) for k, v in out.items()}, flush=True)
    return out


def _category(name):
    lowered = name.lower()
    for key, label in (("sdpa", "attention (cuDNN flash)"), ("fprop", "convolution (cuDNN)"),
                       ("xmma", "convolution (cuDNN)"), ("nvjet", "matmul (cuBLAS)"), ("cutlass", "matmul (cuBLAS)"),
                       ("gemm", "matmul (Triton/cuBLAS)"), ("dot", "matmul (Triton/cuBLAS)"),
                       ("reduce", "reductions (norms)"), ("convert", "dtype converts"), ("transpose", "transposes"),
                       ("loop_", "element-wise fusions"), ("input_", "element-wise fusions")):
        if key in lowered:
            return label
    return "other fusions"


def top_kernels(sd, out_dir, count=30, batch=8, generate=None, steps=None):
    """Run one generation under the JAX profiler and sum GPU kernel time by name and by kind.

    ``generate``: a function of no arguments that runs the generation (default: ``sd``'s SD 1.x text-to-image of
    this benchmark at ``batch``); ``steps``: its sampling steps, for the launches per step (default ``STEPS``).
    """
    import jax

    steps = STEPS if steps is None else steps
    if generate is None:
        def generate():
            sd.text_to_image("a photograph", batch_size=batch, num_steps=STEPS, seed=0, sampler="DDIM",
                             height=SIZE, width=SIZE)

    trace_dir = os.path.join(out_dir, f"jax_trace_batch{batch}")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        generate()
    paths = [os.path.join(root, name) for root, _, names in os.walk(trace_dir) for name in names
             if name.endswith(".trace.json.gz")]
    if not paths:
        return {"error": "no trace written"}
    with gzip.open(paths[0]) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    pids = {e["pid"]: e["args"].get("name", "") for e in events if e.get("ph") == "M" and e.get("name") ==
            "process_name"}
    totals = {}
    for event in events:
        if event.get("ph") == "X" and "GPU" in pids.get(event.get("pid"), "").upper() and "dur" in event:
            totals[event["name"]] = totals.get(event["name"], 0.0) + event["dur"] / 1e6
    total = sum(totals.values())
    launches = sum(1 for event in events if event.get("ph") == "X" and "dur" in event
                   and "GPU" in pids.get(event.get("pid"), "").upper())
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:count]
    categories = {}
    for name, seconds in totals.items():
        categories[_category(name)] = categories.get(_category(name), 0.0) + seconds
    print(f"GPU kernel time in one batch-{batch} generation: {total:.3f} s; by kind:", flush=True)
    for name, seconds in sorted(categories.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds * 1e3:8.1f} ms  {100 * seconds / max(total, 1e-9):5.1f}%  {name}", flush=True)
    print("top kernels:", flush=True)
    for name, seconds in top:
        print(f"  {seconds * 1e3:8.1f} ms  {100 * seconds / max(total, 1e-9):5.1f}%  {name[:100]}", flush=True)
    print(f"{launches} kernel launches ({launches / steps:.0f} per step)", flush=True)
    # The library kernels (cuDNN convolutions and flash attention, cuBLAS/Triton matrix products) do the arithmetic;
    # their sum bounds how fast a generation can get without faster kernels for those operations.
    library = sum(seconds for kind, seconds in categories.items()
                  if kind.startswith(("convolution", "attention", "matmul")))
    print(f"library kernels (convolutions, attention, matrix products): {library:.3f} s = "
          f"{library / batch:.3f} s/image; norms, element-wise and the rest: {total - library:.3f} s", flush=True)
    return {"batch": batch, "total_kernel_s": total, "kernel_launches": launches, "by_kind": categories,
            "library_kernel_s": library, "library_kernel_s_per_image": library / batch,
            "top": [{"name": n, "seconds": s} for n, s in top]}


def cold_start(cache_dir):
    """Time to the first batch-1 image in a fresh process (model build excluded, compilation included)."""
    code = (
        "import os, time, json\n"
        "from sd_keras import backend\n"
        f"cache = {cache_dir!r}\n"
        "backend.enable_compilation_cache(cache) if cache else None\n"
        "from sd_keras.pipeline import StableDiffusion\n"
        f"t0 = time.perf_counter(); sd = StableDiffusion.from_config({PRESET!r}, dtype='bfloat16')\n"
        "t1 = time.perf_counter()\n"
        f"sd.text_to_image('a cat', num_steps={STEPS}, seed=0, sampler='DDIM', height={SIZE}, width={SIZE})\n"
        "t2 = time.perf_counter()\n"
        "print('COLD', json.dumps({'build_s': t1 - t0, 'first_image_s': t2 - t1}))\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    if not cache_dir:
        env["SD_KERAS_COMPILATION_CACHE"] = "0"  # the cache is on by default
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    for line in result.stdout.splitlines():
        if line.startswith("COLD "):
            return json.loads(line[5:])
    return {"error": result.stderr[-1500:]}


def bench_cold(out_dir):
    cache = os.path.join(out_dir, "xla_cache")
    results = {"no_cache": cold_start(None), "cache_fill": cold_start(cache), "warm_cache": cold_start(cache)}
    print("cold start:", results, flush=True)
    return results


def bench_multi_gpu(repeats, batch=16):
    """Batch-16 throughput over every local GPU (DataParallel) vs one GPU, in two fresh processes."""
    code = (
        "import sys, time, json, statistics\n"
        "from sd_keras import backend\n"
        "n = backend.use_devices(sys.argv[1])\n"
        "from sd_keras.pipeline import StableDiffusion\n"
        f"sd = StableDiffusion.from_config({PRESET!r}, dtype='bfloat16')\n"
        f"run = lambda: sd.text_to_image('a cat', batch_size={batch}, num_steps={STEPS}, seed=0, sampler='DDIM', "
        f"height={SIZE}, width={SIZE})\n"
        "run(); run(); times = []\n"
        f"for _ in range({repeats}):\n"
        "    t = time.perf_counter(); run(); times.append(time.perf_counter() - t)\n"
        "print('MULTI', json.dumps({'devices': n, 'seconds': statistics.median(times)}))\n"
    )
    results = {}
    for devices in ("1", "all"):
        result = subprocess.run([sys.executable, "-c", code, devices], capture_output=True, text=True,
                                env={**os.environ, "KERAS_BACKEND": "jax"})
        lines = [line for line in result.stdout.splitlines() if line.startswith("MULTI ")]
        results[devices] = json.loads(lines[0][6:]) if lines else {"error": result.stderr[-1500:]}
    one, many = results["1"].get("seconds"), results["all"].get("seconds")
    if one and many:
        results["speedup"] = one / many
        results["images_per_s"] = {"1": batch / one, "all": batch / many}
    print("multi-GPU:", results, flush=True)
    return results


# -- diffusers ---------------------------------------------------------------------------------------------------
def build_diffusers():
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=SIZE // 8, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                        num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu"))
    device, dtype = "cuda", torch.float16
    unet, vae, text = (m.to(device, dtype).eval() for m in (unet, vae, text))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return unet, vae, text, scheduler


def diffusers_generate(parts, batch):
    import torch

    unet, vae, text, scheduler = parts
    with torch.inference_mode():
        ids = torch.full((batch, 77), 49407, device="cuda", dtype=torch.long)
        ids[:, 0] = 49406
        context = torch.cat([text(ids)[0], text(ids)[0]])
        generator = torch.Generator("cuda").manual_seed(0)
        latent = torch.randn((batch, 4, SIZE // 8, SIZE // 8), generator=generator, device="cuda",
                             dtype=torch.float16)
        scheduler.set_timesteps(STEPS)
        for t in scheduler.timesteps:
            noise = unet(torch.cat([latent, latent]), t, encoder_hidden_states=context).sample
            unconditional, conditional = noise.chunk(2)
            latent = scheduler.step(unconditional + GUIDANCE * (conditional - unconditional), t, latent).prev_sample
        image = vae.decode(latent / 0.18215).sample
        torch.cuda.synchronize()
    return image


def bench_diffusers(repeats, compiled):
    import torch

    parts = build_diffusers()
    label = "diffusers+torch.compile" if compiled else "diffusers eager"
    if compiled:
        unet, vae, text, scheduler = parts
        unet = unet.to(memory_format=torch.channels_last)
        parts = (torch.compile(unet, fullgraph=True), vae, text, scheduler)
    results = {}
    for batch in (1, 8):
        start = time.perf_counter()
        diffusers_generate(parts, batch)
        first = time.perf_counter() - start
        diffusers_generate(parts, batch)
        median, times = _median_time(lambda: diffusers_generate(parts, batch), repeats)
        results[f"batch{batch}"] = {"seconds": median, "per_image": median / batch, "first_call": first,
                                    "times": times}
        print(f"{label} batch {batch}: {median:.3f} s ({median / batch:.3f} s/image), first {first:.1f} s",
              flush=True)
    del parts
    torch.cuda.empty_cache()
    return results


def table(results):
    rows = [("sd_keras (JAX, bf16)", results.get("sd_keras")), ("diffusers eager fp16", results.get("diffusers")),
            ("diffusers + torch.compile fp16", results.get("diffusers_compile"))]
    base = (results.get("diffusers_compile") or {}).get("batch8", {}).get("per_image")
    lines = [f"card: {results['card']}", "| | batch 1 | batch 8 (per image) | first call b1 | vs compile b8 |",
             "|---|---|---|---|---|"]
    for name, data in rows:
        if not data or "batch1" not in data or "batch8" not in data:
            continue
        b1, b8 = data["batch1"], data["batch8"]
        ratio = f"{base / b8['per_image']:.2f}x" if base else "-"
        lines.append(f"| {name} | {b1['seconds']:.3f} s | {b8['seconds']:.3f} s ({b8['per_image']:.3f}) | "
                     f"{b1['first_call']:.1f} s | {ratio} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_bench.json")
    parser.add_argument("--parts", default="sd_keras,kernels,cold,diffusers,compile,multi_gpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,8", help="sd_keras batch sizes (comma-separated)")
    parser.add_argument("--smoke", action="store_true", help="tiny preset, 64x64, 2 steps (checks the script)")
    args = parser.parse_args()
    global STEPS, SIZE, PRESET
    if args.smoke:
        STEPS, SIZE, PRESET = 2, 64, "tiny"
    parts = set(args.parts.split(","))
    batches = tuple(int(value) for value in args.batches.split(","))
    out_dir = os.path.dirname(os.path.abspath(args.out))
    results = {"card": card_name(), "date": time.strftime("%Y-%m-%d"), "steps": STEPS, "size": SIZE,
               "guidance": GUIDANCE, "tflop_per_image": TFLOP_PER_IMAGE}

    def save():
        with open(args.out + ".tmp", "w") as f:
            json.dump(results, f, indent=2)
        os.replace(args.out + ".tmp", args.out)

    for part, fn in (
        ("sd_keras", lambda: bench_sd_keras(args.repeats, batches=batches)),
        ("cold", lambda: bench_cold(out_dir)),
        ("diffusers", lambda: bench_diffusers(args.repeats, compiled=False)),
        ("compile", lambda: bench_diffusers(args.repeats, compiled=True)),
        ("multi_gpu", lambda: bench_multi_gpu(max(2, args.repeats // 2))),
    ):
        if part not in parts:
            continue
        try:
            value = fn()
            if part == "sd_keras":
                sd, value = value
                if "kernels" in parts:
                    value["kernels"] = top_kernels(sd, out_dir)
                    value["kernels_batch1"] = top_kernels(sd, out_dir, batch=1)
                del sd
            results[{"compile": "diffusers_compile"}.get(part, part)] = value
        except Exception as error:  # noqa: BLE001 - one failing part must not lose the others
            import traceback

            traceback.print_exc()
            results[part] = {"error": repr(error)}
        save()
    if "batch8" in results.get("sd_keras", {}):
        b8 = results["sd_keras"]["batch8"]["per_image"]
        results["sd_keras"]["achieved_tflops_b8"] = TFLOP_PER_IMAGE / b8
    save()
    print(table(results))


if __name__ == "__main__":
    main()
