"""GPU benchmark, SDXL: sd_keras (Keras 3 on JAX, bf16, one XLA program per generation) against diffusers fp16
(eager and torch.compile) on one card.

Work: SDXL base shapes with random weights (UNet 2.57 B parameters), 1024x1024, 30 Euler steps, CFG 5, VAE decode
included; batch 1 and 4. Also the cold start (first image in a fresh process, compilation included) without and
with a warm persistent compilation cache (``cold``: the model built with random weights; ``cold_files``: loaded from
a folder of float16 weight files, as a user's checkpoint is), peak GPU memory of each, and one sd_keras run in a fresh process under
``XLA_PYTHON_CLIENT_MEM_FRACTION`` set for a 16 GB card.

    KERAS_BACKEND=jax python benchmarks/gpu_bench_sdxl.py --out benchmarks/results/gpu_bench_sdxl_h200.json
    KERAS_BACKEND=jax python benchmarks/gpu_bench_sdxl.py --parts sd_keras,cold   # a subset
    KERAS_BACKEND=jax python benchmarks/gpu_bench_sdxl.py --parts sd_keras --profile   # + top kernels of batch 1
    python benchmarks/gpu_bench_sdxl.py --smoke --out /tmp/smoke.json                 # CPU: tiny-xl, 64x64, 2 steps

``--profile`` also runs one batch-1 generation under the JAX profiler and records its top GPU kernels, summed by
name and by kind (``gpu_bench.top_kernels``; the trace is written beside the JSON, in ``sdxl_trace/``).

Prints a table and writes JSON atomically (card named). ``--smoke`` checks the script on a CPU with the tiny SDXL
(diffusers then runs on the CPU in float32 with the tiny diffusers shapes); its numbers are not measurements.
Not a test: numbers depend on the card.
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import _median_time, top_kernels  # noqa: E402

STEPS, SIZE, GUIDANCE = 30, 1024, 5.0
PRESET = "sd-xl"  # shapes only: random weights
BATCHES = (1, 4)
SMOKE = False
GIB = 2**30
MEMORY_16GB_FRACTION = 16 * GIB  # divided by the card's memory at run time


def _jax_memory():
    try:
        import jax

        return jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - a device without memory statistics (the CPU)
        return {}


def _peak_gib():
    peak = _jax_memory().get("peak_bytes_in_use")
    return None if peak is None else round(peak / GIB, 2)


# -- sd_keras ---------------------------------------------------------------------------------------------------
def _sd_keras_code(body):
    """A fresh-process script: the model built from the preset's shapes in bf16, then ``body``."""
    preset = "tiny-xl" if SMOKE else PRESET
    return (
        "import os, time, json, statistics\n"
        "from sd_keras import backend\n"
        "cache = os.environ.get('BENCH_CACHE')\n"
        "backend.enable_compilation_cache(cache) if cache else None\n"
        "from sd_keras.pipeline_sdxl import StableDiffusionXL\n"
        "folder = os.environ.get('BENCH_MODEL_DIR')\n"
        "t0 = time.perf_counter()\n"
        f"xl = (StableDiffusionXL.from_checkpoint(folder, dtype='bfloat16') if folder else "
        f"StableDiffusionXL.from_config({preset!r}, dtype='bfloat16'))\n"
        "build_s = time.perf_counter() - t0\n"
        f"run = lambda batch: xl.text_to_image('a photo of a cat', batch_size=batch, num_steps={STEPS}, seed=0, "
        f"sampler='Euler', unconditional_guidance_scale={GUIDANCE}, height={SIZE}, width={SIZE})\n"
        + body
    )


def _run_fresh(code, tag, env=None):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "KERAS_BACKEND": "jax", **(env or {})})
    for line in result.stdout.splitlines():
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    return {"error": result.stderr[-2000:]}


def bench_sd_keras(repeats, profile_dir=None):
    """Warm times of batch 1 and 4 (compiled once per shape), peak memory, per-call first time; with
    ``profile_dir``, the top kernels of one batch-1 generation (its trace written there)."""
    import numpy as np

    from sd_keras.pipeline_sdxl import StableDiffusionXL

    xl = StableDiffusionXL.from_config("tiny-xl" if SMOKE else PRESET, dtype="bfloat16")
    results = {"unet_parameters": int(sum(int(np.prod(w.shape)) for w in xl.diffusion_model.weights))}
    for batch in BATCHES:
        def generate():
            return xl.text_to_image("a photo of a cat", batch_size=batch, num_steps=STEPS, seed=0, sampler="Euler",
                                    unconditional_guidance_scale=GUIDANCE, height=SIZE, width=SIZE)

        start = time.perf_counter()
        generate()
        first = time.perf_counter() - start
        median, times = _median_time(generate, repeats)
        results[f"batch{batch}"] = {"seconds": median, "per_image": median / batch, "first_call": first,
                                    "times": times, "peak_gib": _peak_gib()}
        print(f"sd_keras batch {batch}: {median:.3f} s ({median / batch:.3f} s/image), first {first:.1f} s, "
              f"peak {results[f'batch{batch}']['peak_gib']} GiB", flush=True)
    results["components"] = components(xl, repeats)
    if profile_dir:
        def generate_one():
            return xl.text_to_image("a photo of a cat", batch_size=1, num_steps=STEPS, seed=0, sampler="Euler",
                                    unconditional_guidance_scale=GUIDANCE, height=SIZE, width=SIZE)

        results["kernels_batch1"] = top_kernels(xl, profile_dir, batch=1, generate=generate_one, steps=STEPS)
    return results


def components(xl, repeats):
    """Seconds of the text encoders, the denoising loop and the VAE decode of one batch-1 generation."""
    from sd_keras import backend

    batch = 1
    context, _ = xl._contexts(["a photo of a cat"], None)
    _, unconditional = xl._contexts(None, [""])
    scheduler = xl._scheduler("Euler", STEPS)
    latent = xl._noise(0, batch, (SIZE // 8, SIZE // 8, 4), scheduler)[0] * scheduler.init_noise_sigma
    encode = _median_time(lambda: xl._contexts(["a photo of a cat"], None), repeats)[0]
    loop = _median_time(lambda: backend.wait(xl._denoise(scheduler, context, unconditional, latent, None,
                                                         guidance_scale=GUIDANCE)), repeats)[0]
    final = xl._denoise(scheduler, context, unconditional, latent, None, guidance_scale=GUIDANCE)
    decode = _median_time(lambda: xl.decode(final), repeats)[0]
    return {"text_encoders_s": encode, "loop_s": loop, "loop_per_step_s": loop / STEPS, "vae_decode_s": decode}


def bench_cold(out_dir, from_files=False):
    """First batch-1 image in a fresh process: no cache, filling a cache, warm cache. ``from_files``: the model is
    loaded from a folder of weight files (saved once by another fresh process, float16 files, as a user's
    checkpoint is read) instead of built with random weights; ``build_s`` is then the load."""
    code = _sd_keras_code("t1 = time.perf_counter(); run(1); first = time.perf_counter() - t1\n"
                          "print('COLD', json.dumps({'build_s': build_s, 'first_image_s': first}))\n")
    env = {}
    if from_files:
        folder = os.path.join(out_dir, "sdxl_saved")
        preset = "tiny-xl" if SMOKE else PRESET
        save = ("import os, json, time\nfrom sd_keras.pipeline_sdxl import StableDiffusionXL\n"
                f"t = time.perf_counter(); StableDiffusionXL.from_config({preset!r}, dtype='bfloat16')"
                f".save_pretrained({folder!r}, weight_dtype='float16')\n"
                "print('SAVED', json.dumps({'seconds': time.perf_counter() - t}))\n")
        saved = _run_fresh(save, "SAVED")
        if "error" in saved:
            return {"save": saved}
        env = {"BENCH_MODEL_DIR": folder}
    cache = os.path.join(out_dir, "xla_cache_sdxl" + ("_files" if from_files else ""))
    results = {"no_cache": _run_fresh(code, "COLD", {**env, "SD_KERAS_COMPILATION_CACHE": "0"}),
               "cache_fill": _run_fresh(code, "COLD", {**env, "BENCH_CACHE": cache}),
               "warm_cache": _run_fresh(code, "COLD", {**env, "BENCH_CACHE": cache})}
    print("cold start" + (" (weights from files)" if from_files else "") + ":", results, flush=True)
    return results


def bench_16gb(repeats):
    """Batch 1 in a fresh process whose JAX may use 16 GB of the card (XLA_PYTHON_CLIENT_MEM_FRACTION)."""
    limit = _jax_memory().get("bytes_limit")
    if not limit:
        return {"skipped": "no device memory statistics (CPU)"}
    # this process's limit is the share of the card JAX took (XLA_PYTHON_CLIENT_MEM_FRACTION, 0.75 by default)
    total = limit / float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75"))
    fraction = round(min(1.0, MEMORY_16GB_FRACTION / total), 4)
    code = _sd_keras_code(
        "run(1); times = []\n"
        f"for _ in range({repeats}):\n"
        "    t = time.perf_counter(); run(1); times.append(time.perf_counter() - t)\n"
        "import jax; stats = jax.devices()[0].memory_stats() or {}\n"
        "print('MEM16', json.dumps({'seconds': statistics.median(times), "
        "'peak_gib': stats.get('peak_bytes_in_use', 0) / 2**30, 'limit_gib': stats.get('bytes_limit', 0) / 2**30}))\n")
    result = _run_fresh(code, "MEM16", {"XLA_PYTHON_CLIENT_MEM_FRACTION": str(fraction),
                                         "XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
    result["mem_fraction"] = fraction
    print("16 GB run:", result, flush=True)
    return result


# -- diffusers ---------------------------------------------------------------------------------------------------
def build_diffusers():
    """SDXL base shapes with random weights (fp16 on CUDA; the tiny test shapes in float32 with --smoke)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    device, dtype = ("cpu", torch.float32) if SMOKE else ("cuda", torch.float16)
    if SMOKE:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
        import diffusers_sdxl

        models = diffusers_sdxl.build("base")
        unet, vae, text, text_2 = (models[k] for k in ("unet", "vae", "text_encoder", "text_encoder_2"))
    else:
        unet = UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            scaling_factor=0.13025)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                            num_hidden_layers=12, hidden_act="quick_gelu"))
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120,
                                                            num_attention_heads=20, num_hidden_layers=32,
                                                            hidden_act="gelu", projection_dim=1280))
    unet, vae, text, text_2 = (m.to(device, dtype).eval() for m in (unet, vae, text, text_2))
    vae = vae.to(torch.float32)  # the stock SDXL VAE overflows in fp16; diffusers upcasts it too
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return {"unet": unet, "vae": vae, "text": text, "text_2": text_2, "scheduler": scheduler, "device": device,
            "dtype": dtype}


def diffusers_generate(parts, batch):
    import torch

    device, dtype = parts["device"], parts["dtype"]
    unet, scheduler = parts["unet"], parts["scheduler"]
    vocab = parts["text"].config.vocab_size
    with torch.inference_mode():
        ids = torch.full((batch, 77), vocab - 1, device=device, dtype=torch.long)
        ids[:, 0] = vocab - 2
        hidden_1 = parts["text"](ids, output_hidden_states=True).hidden_states[-2]
        out_2 = parts["text_2"](ids, output_hidden_states=True)
        context = torch.cat([hidden_1, out_2.hidden_states[-2]], dim=-1)
        context = torch.cat([torch.zeros_like(context), context])
        pooled = torch.cat([torch.zeros_like(out_2.text_embeds), out_2.text_embeds])
        time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * (2 * batch), device=device, dtype=dtype)
        generator = torch.Generator(device).manual_seed(0)
        latent = torch.randn((batch, 4, SIZE // 8, SIZE // 8), generator=generator, device=device, dtype=dtype)
        scheduler.set_timesteps(STEPS)
        latent = latent * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latent, latent]), t)
            noise = unet(model_input, t, encoder_hidden_states=context,
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
            unconditional, conditional = noise.chunk(2)
            latent = scheduler.step(unconditional + GUIDANCE * (conditional - unconditional), t, latent).prev_sample
        image = parts["vae"].decode(latent.float() / 0.13025).sample
        if device == "cuda":
            torch.cuda.synchronize()
    return image


def _part_in_child(call, tag):
    """``call`` (code of this module, e.g. ``bench_diffusers(3, compiled=True)``) in a fresh process; its result.
    JAX keeps the device memory it takes (75 % of the card by default) until its process ends, and PyTorch keeps its
    cache: a part run beside another framework's in one process ran out of memory on an 80 GB card (diffusers'
    batch 4 after the sd_keras part). Every part therefore runs in a process of its own, which starts with the
    whole card; this process never touches the device."""
    code = ("import json, sys\n"
            f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
            "import gpu_bench_sdxl as bench\n"
            f"bench.STEPS, bench.SIZE, bench.SMOKE = {STEPS!r}, {SIZE!r}, {SMOKE!r}\n"
            f"print({tag!r}, json.dumps(bench.{call}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = result.stdout.splitlines()
    print(*(line for line in lines if not line.startswith(tag + " ")), sep="\n", flush=True)
    for line in lines:
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    return {"error": result.stderr[-2000:]}


def card_in_child():
    """The device's name, asked by a fresh process that takes no device memory."""
    code = "import jax; print('CARD', jax.devices()[0].device_kind)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
    names = [line[5:] for line in result.stdout.splitlines() if line.startswith("CARD ")]
    return names[0] if names else "unknown"


def bench_diffusers(repeats, compiled):
    import torch

    parts = build_diffusers()
    label = "diffusers+torch.compile" if compiled else "diffusers eager"
    if compiled:
        unet = parts["unet"].to(memory_format=torch.channels_last)
        # one static graph per batch size, as for sd_keras's programs (the default would recompile batch 4
        # with symbolic shapes)
        parts["unet"] = torch.compile(unet, fullgraph=True, dynamic=False)
    results = {}
    for batch in BATCHES:
        if parts["device"] == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        diffusers_generate(parts, batch)
        first = time.perf_counter() - start
        median, times = _median_time(lambda: diffusers_generate(parts, batch), repeats)
        peak = round(torch.cuda.max_memory_allocated() / GIB, 2) if parts["device"] == "cuda" else None
        results[f"batch{batch}"] = {"seconds": median, "per_image": median / batch, "first_call": first,
                                    "times": times, "peak_gib": peak}
        print(f"{label} batch {batch}: {median:.3f} s ({median / batch:.3f} s/image), first {first:.1f} s, "
              f"peak {peak} GiB", flush=True)
    parts.clear()  # release the models before the next part
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return results


# -- report ------------------------------------------------------------------------------------------------------
TARGETS = {"batch1": 0.74, "batch4": 3.4, "cold": 40.0, "warm_cache": 8.0, "peak_gib": 12.0}


def table(results):
    rows = [("sd_keras (JAX, bf16)", results.get("sd_keras")), ("diffusers eager fp16", results.get("diffusers")),
            ("diffusers + torch.compile fp16", results.get("diffusers_compile"))]
    lines = [f"card: {results['card']} ({results['size']}x{results['size']}, {results['steps']} Euler steps, "
             f"CFG {results['guidance']})", "| | batch 1 | batch 4 | first call b1 | peak b1 (GiB) |",
             "|---|---|---|---|---|"]
    for name, data in rows:
        if not data or "batch1" not in data:
            continue
        b1, b4 = data["batch1"], data.get("batch4", {})
        b4_text = f"{b4['seconds']:.3f} s" if b4 else "-"
        lines.append(f"| {name} | {b1['seconds']:.3f} s | {b4_text} | {b1['first_call']:.1f} s | "
                     f"{b1.get('peak_gib')} |")
    cold = results.get("cold") or {}
    if cold:
        lines.append("cold start (first image): " + ", ".join(
            f"{key} {value.get('first_image_s', float('nan')):.1f} s" for key, value in cold.items()))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_bench_sdxl.json")
    parser.add_argument("--parts", default="sd_keras,cold,cold_files,mem16,diffusers,compile")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="CPU: tiny-xl, 64x64, 2 steps (checks the script)")
    parser.add_argument("--profile", action="store_true",
                        help="top GPU kernels of one batch-1 generation (runs the sd_keras part)")
    args = parser.parse_args()
    global STEPS, SIZE, SMOKE
    if args.smoke:
        STEPS, SIZE, SMOKE = 2, 64, True
        args.repeats = min(args.repeats, 2)
    parts = set(args.parts.split(","))
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if args.profile:
        parts.add("sd_keras")
    results = {"card": card_in_child(), "date": time.strftime("%Y-%m-%d"), "steps": STEPS, "size": SIZE,
               "guidance": GUIDANCE, "smoke": SMOKE, "targets": TARGETS}

    def save():
        with open(args.out + ".tmp", "w") as f:
            json.dump(results, f, indent=2)
        os.replace(args.out + ".tmp", args.out)

    trace = os.path.join(out_dir, "sdxl_trace") if args.profile else None
    for part, key, fn in (
        ("sd_keras", "sd_keras", lambda: _part_in_child(f"bench_sd_keras({args.repeats!r}, {trace!r})", "SD_KERAS")),
        ("cold", "cold", lambda: bench_cold(out_dir)),
        ("cold_files", "cold_from_files", lambda: bench_cold(out_dir, from_files=True)),
        ("mem16", "mem16", lambda: bench_16gb(args.repeats)),
        ("diffusers", "diffusers", lambda: _part_in_child(f"bench_diffusers({args.repeats!r}, compiled=False)",
                                                          "TORCH")),
        ("compile", "diffusers_compile", lambda: _part_in_child(f"bench_diffusers({args.repeats!r}, compiled=True)",
                                                                "TORCH")),
    ):
        if part not in parts:
            continue
        try:
            results[key] = fn()
        except Exception as error:  # noqa: BLE001 - record it and go on with the other parts
            results[key] = {"error": f"{type(error).__name__}: {error}"}
            print(f"{part}: {results[key]['error']}", flush=True)
        save()
    print(table(results))
    save()


if __name__ == "__main__":
    main()
