"""GPU benchmark of hires fix and of AI upscaling: sd_keras against diffusers and spandrel on the same card.

- ``hires``: SD 1.x shapes with random weights, batch 1, CFG 7.5, DDIM: sd_keras (JAX, bf16) text-to-image 512x512
  in 25 steps, latent upscale x2, image-to-image 1024x1024 (15 steps at strength 0.5), both passes compiled;
  against diffusers (fp16, eager and with torch.compile of the UNet) doing the same work: text-to-image 512,
  bilinear latent resize to 128x128, noise to the strength's step, denoise at 1024, decode.
- ``rrdbnet``: RRDBNet as RealESRGAN_x4plus (23 blocks, 64 features, random weights) on a 512x512 image (x4:
  2048x2048), sd_keras (bf16, 256-pixel tiles) against spandrel (fp16, whole image) from the same file.

    KERAS_BACKEND=jax python benchmarks/gpu_bench_hires.py --out results/gpu_bench_hires_h200.json
    python benchmarks/gpu_bench_hires.py --smoke     # the script itself on the CPU: tiny sizes, not a measurement

Prints the numbers and writes JSON (card named).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

GUIDANCE, STRENGTH = 7.5, 0.5
FULL = dict(preset="sd-v1", size=512, scale=2, steps=25, hires_steps=15, dtype="bfloat16", device="cuda",
            rrdb_blocks=23, rrdb_size=512, tile=256, repeats=3)
SMOKE = dict(preset="tiny", size=64, scale=2, steps=2, hires_steps=2, dtype="float32", device="cpu",
             rrdb_blocks=1, rrdb_size=32, tile=0, repeats=1)


def _median_time(fn, repeats):
    fn()  # compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 4)


def card_name():
    try:
        import jax

        return jax.devices()[0].device_kind
    except Exception:  # noqa: BLE001
        return "unknown"


# -- hires fix -------------------------------------------------------------------------------------------------
def bench_sd_keras_hires(cfg, profile_dir=None):
    """The hires generation, then each pass alone (first pass at the first-pass size; second pass: image-to-image at
    the target size from the first pass's image); with ``profile_dir``, the top GPU kernels of one hires run."""
    from sd_keras.hires import HiresFix
    from sd_keras.pipeline import StableDiffusion

    sd = StableDiffusion.from_config(cfg["preset"], dtype=cfg["dtype"])
    hires = HiresFix(scale=cfg["scale"], upscaler="Latent", denoising_strength=STRENGTH,
                     second_pass_steps=cfg["hires_steps"])

    def run():
        return sd.text_to_image("a red circle", num_steps=cfg["steps"], seed=0, sampler="DDIM",
                                unconditional_guidance_scale=GUIDANCE, height=cfg["size"], width=cfg["size"],
                                hires=hires)

    start = time.perf_counter()
    output = list(run().shape)  # the first call: both passes' programs compiled
    first = time.perf_counter() - start
    seconds = _median_time(run, cfg["repeats"])
    result = {"seconds": seconds, "first_call_s": first, "compilations": sd.programs.compilations,
              "output": output}

    def first_pass():
        return sd.text_to_image("a red circle", num_steps=cfg["steps"], seed=0, sampler="DDIM",
                                unconditional_guidance_scale=GUIDANCE, height=cfg["size"], width=cfg["size"])

    target = cfg["size"] * cfg["scale"]
    start = _resize(first_pass()[0], target)

    def second_pass():
        return sd.image_to_image("a red circle", start, num_steps=cfg["hires_steps"], strength=STRENGTH, seed=0,
                                 sampler="DDIM", unconditional_guidance_scale=GUIDANCE)

    result["first_pass_seconds"] = _median_time(first_pass, cfg["repeats"])
    result["second_pass_seconds"] = _median_time(second_pass, cfg["repeats"])
    if profile_dir:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from gpu_bench import top_kernels

        result["kernels"] = top_kernels(sd, profile_dir, batch=1, generate=run,
                                        steps=cfg["steps"] + cfg["hires_steps"])
    return result


def _resize(image, side):
    """The first pass's image (uint8 HWC) resized to side x side (Lanczos), as an image upscaler's hand-off."""
    from PIL import Image

    return __import__("numpy").asarray(Image.fromarray(image).resize((side, side), Image.LANCZOS))


def build_diffusers(cfg):
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    if cfg["preset"] == "tiny":  # the smoke run: small random models of the same kinds
        unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                    attention_head_dim=4, norm_num_groups=8)
        vae = AutoencoderKL(block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4,
                            norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                            num_hidden_layers=2, max_position_embeddings=77))
    else:
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                            num_hidden_layers=12, max_position_embeddings=77,
                                            hidden_act="quick_gelu"))
    dtype = torch.float16 if cfg["device"] == "cuda" else torch.float32
    unet, vae, text = (m.to(cfg["device"], dtype).eval() for m in (unet, vae, text))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return unet, vae, text, scheduler, dtype


def diffusers_hires(parts, cfg):
    """Text-to-image at the first-pass size, latent resize, image-to-image at the target size, decode."""
    import torch

    unet, vae, text, scheduler, dtype = parts
    device = cfg["device"]

    def denoise(latent, timesteps, context):
        for t in timesteps:
            noise = unet(torch.cat([latent, latent]), t, encoder_hidden_states=context).sample
            unconditional, conditional = noise.chunk(2)
            latent = scheduler.step(unconditional + GUIDANCE * (conditional - unconditional), t, latent).prev_sample
        return latent

    with torch.inference_mode():
        ids = torch.full((1, 77), 49407, device=device, dtype=torch.long)
        ids[:, 0] = 49406
        context = torch.cat([text(ids)[0], text(ids)[0]])
        generator = torch.Generator(device).manual_seed(0)
        side = cfg["size"] // 8
        latent = torch.randn((1, 4, side, side), generator=generator, device=device, dtype=dtype)
        scheduler.set_timesteps(cfg["steps"])
        latent = denoise(latent, scheduler.timesteps, context)
        latent = torch.nn.functional.interpolate(latent, scale_factor=cfg["scale"], mode="bilinear")
        scheduler.set_timesteps(cfg["hires_steps"])
        # diffusers' image-to-image rule, as sd_keras's start_index: int(steps * strength) steps run
        start = cfg["hires_steps"] - min(int(cfg["hires_steps"] * STRENGTH), cfg["hires_steps"])
        timesteps = scheduler.timesteps[start:]
        noise = torch.randn(latent.shape, generator=generator, device=device, dtype=dtype)
        latent = scheduler.add_noise(latent, noise, timesteps[:1])
        latent = denoise(latent, timesteps, context)
        image = vae.decode(latent / 0.18215).sample
        if device == "cuda":
            torch.cuda.synchronize()
    return image


def bench_diffusers_hires(cfg, compiled):
    import torch

    parts = build_diffusers(cfg)
    if compiled:
        # one static graph per latent size (64 and 128): with torch.compile's default, the second size makes
        # dynamo recompile the UNet with symbolic shapes, which compiles longer and runs slower
        unet = parts[0].to(memory_format=torch.channels_last)
        parts = (torch.compile(unet, dynamic=False),) + parts[1:]
    start = time.perf_counter()
    output = list(diffusers_hires(parts, cfg).shape)  # the first call: compilation, cuDNN and cuBLAS set-up
    first = time.perf_counter() - start
    return {"seconds": _median_time(lambda: diffusers_hires(parts, cfg), cfg["repeats"]),
            "first_call_s": first, "output": output}


# -- RRDBNet ---------------------------------------------------------------------------------------------------
def rrdbnet_file(folder, blocks):
    """A random RealESRGAN_x4plus-shaped RRDBNet state dict written as .safetensors (basicsr key layout)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    state = {}

    def conv(name, out_channels, in_channels):
        state[f"{name}.weight"] = torch.randn(out_channels, in_channels, 3, 3, generator=generator) * 0.02
        state[f"{name}.bias"] = torch.zeros(out_channels)

    conv("conv_first", 64, 3)
    for block in range(blocks):
        for dense in range(1, 4):
            for index in range(1, 6):
                conv(f"body.{block}.rdb{dense}.conv{index}", 64 if index == 5 else 32, 64 + (index - 1) * 32)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, 64, 64)
    conv("conv_last", 3, 64)
    path = os.path.join(folder, "rrdbnet_x4.safetensors")
    save_file(state, path)
    return path


def import_spandrel():
    """spandrel's ModelLoader. Two of spandrel's architectures (LaMa, RestoreFormer) import torchvision when the
    package loads; where torchvision cannot be imported (PyPI's torchvision wheels need PyPI's CUDA build of torch:
    a CPU-only torch, as on the CPU smoke run, cannot load them) placeholder modules let spandrel's registry load.
    ESRGAN's RRDBNet, the one run here, needs torch only (as in tests/test_upscalers.py)."""
    import types

    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or RuntimeError from a torchvision built for another torch
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[name]

        def unavailable(*args, **kwargs):
            raise RuntimeError("torchvision is not available")

        functional = types.ModuleType("torchvision.transforms.functional")
        functional.InterpolationMode = type("InterpolationMode", (), {"NEAREST": "nearest", "BILINEAR": "bilinear"})
        functional.rotate = functional.normalize = unavailable
        transforms = types.ModuleType("torchvision.transforms")
        transforms.functional = functional
        package = types.ModuleType("torchvision")
        package.transforms = transforms
        sys.modules.update({"torchvision": package, "torchvision.transforms": transforms,
                            "torchvision.transforms.functional": functional})
    from spandrel import ModelLoader

    return ModelLoader


def bench_rrdbnet(cfg):
    import numpy as np

    from sd_keras.upscale import upscale
    from sd_keras.weights.upscalers import load_upscaler

    image = np.random.default_rng(0).integers(0, 256, (cfg["rrdb_size"], cfg["rrdb_size"], 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        path = rrdbnet_file(folder, cfg["rrdb_blocks"])
        model = load_upscaler(path, dtype=None if cfg["dtype"] == "float32" else cfg["dtype"])
        result = {"sd_keras": {"seconds": _median_time(lambda: upscale(image, model, tile=cfg["tile"]),
                                                       cfg["repeats"]), "tile": cfg["tile"]},
                  "sd_keras_whole_image": {"seconds": _median_time(lambda: upscale(image, model, tile=0),
                                                                   cfg["repeats"]), "tile": 0}}
        try:
            import torch

            ModelLoader = import_spandrel()
        except ImportError as error:
            result["spandrel"] = {"skipped": str(error)}
            return result
        dtype = torch.float16 if cfg["device"] == "cuda" else torch.float32
        net = ModelLoader().load_from_file(path).model.to(cfg["device"], dtype).eval()
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].to(cfg["device"], dtype) / 255

        def run():
            with torch.inference_mode():
                out = net(pixels)
                if cfg["device"] == "cuda":
                    torch.cuda.synchronize()
            return out

        result["spandrel"] = {"seconds": _median_time(run, cfg["repeats"]), "output": list(run().shape)}
        # the same file gives the same picture (uint8 levels; sd_keras tiles where the run asks it to)
        reference = (run()[0].permute(1, 2, 0).float().clamp(0, 1) * 255).round().cpu().numpy()
        ours = upscale(image, model, tile=cfg["tile"]).astype(np.float32)
        result["max_level_difference"] = float(np.abs(ours - reference).max())
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script only")
    parser.add_argument("--parts", default="sd_keras,diffusers,compile,rrdbnet")
    parser.add_argument("--out", help="JSON file to write")
    parser.add_argument("--profile", help="folder for a trace of one sd_keras hires run (its top GPU kernels are "
                                          "recorded)")
    args = parser.parse_args(argv)
    cfg = SMOKE if args.smoke else FULL
    results = {"card": card_name(), "date": time.strftime("%Y-%m-%d", time.gmtime()), "smoke": args.smoke,
               "settings": cfg}
    if args.smoke:
        results["note"] = ("smoke run: tiny random models on the CPU; it checks that the script runs end to end, "
                           "its times are not a measurement")
    parts = {"sd_keras": lambda: bench_sd_keras_hires(cfg, args.profile),
             "diffusers": lambda: bench_diffusers_hires(cfg, compiled=False),
             "compile": lambda: bench_diffusers_hires(cfg, compiled=True),
             "rrdbnet": lambda: bench_rrdbnet(cfg)}
    for part in args.parts.split(","):
        results[part] = parts[part]()
        print(part, json.dumps(results[part]), flush=True)
        if args.out:  # after every part: a run stopped by a time limit keeps the parts it finished
            from sd_keras import files

            with files.atomic_write(args.out, "w") as handle:
                json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
