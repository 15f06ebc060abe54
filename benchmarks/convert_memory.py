"""Peak memory of converting / loading an SD 1.5-sized original single file.

Builds a random-valued original-layout ``.safetensors`` with exactly SD 1.5's tensor names and shapes (UNet,
VAE and CLIP ViT-L/14 text encoder in float32, about 4.3 GB; the shapes come from diffusers' SD 1.5 configs
instantiated on torch's ``meta`` device and the names from the original-layout renaming in
``tests/diffusers_models.py``), then, each in a fresh process, runs ``sd-keras convert`` on it and
``StableDiffusion.from_checkpoint`` of it, and records the peak resident memory (``ru_maxrss``) of each against
the model size (the file's tensor bytes). Goal: converting peaks under 2x the model size.

    KERAS_BACKEND=jax python benchmarks/convert_memory.py [--workdir DIR] [--keep]

Writes ``benchmarks/results/convert_memory.json``. The temporary file and output (about 8.6 GB of disk) are
deleted at the end unless ``--keep``.
"""

import argparse
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULT = os.path.join(HERE, "results", "convert_memory.json")

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                 layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, latent_channels=4, sample_size=512)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")


def sd15_shapes():
    """``{original key: (shape, dtype)}`` of an SD 1.5 single file, without allocating any weights."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import diffusers_models as dm

    with torch.device("meta"):
        models = {"kind": "sd1", "unet": UNet2DConditionModel(**SD15_UNET), "vae": AutoencoderKL(**SD15_VAE),
                  "text_encoder": CLIPTextModel(CLIPTextConfig(**SD15_TEXT))}
    shapes = {}
    unet_config = models["unet"].config
    for key, value in models["unet"].state_dict().items():
        shapes["model.diffusion_model." + dm._unet_key(key, unet_config)] = (tuple(value.shape), "F32")
    for key, value in models["vae"].state_dict().items():
        name = dm._vae_key(key, 4)
        shape = tuple(value.shape)
        if ".mid.attn_1." in name and name.endswith("weight") and len(shape) == 2:
            shape += (1, 1)
        shapes["first_stage_model." + name] = (shape, "F32")
    for key, value in models["text_encoder"].state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key
        shapes["cond_stage_model.transformer." + key] = (tuple(value.shape), "F32")
    shapes["cond_stage_model.transformer.text_model.embeddings.position_ids"] = ((1, 77), "I64")
    return shapes


def write_random_safetensors(path, shapes, seed=0):
    """Stream a safetensors file tensor by tensor (never more than one tensor in memory)."""
    rng = np.random.default_rng(seed)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, (shape, dtype) in shapes.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * (4 if dtype == "F32" else 8)
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for key, (shape, dtype) in shapes.items():
            if dtype == "I64":
                array = np.broadcast_to(np.arange(shape[-1], dtype="<i8"), shape).copy()
            else:
                array = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
                if key.endswith(("norm1.weight", "norm2.weight", "norm3.weight", "norm.weight")):
                    array += np.float32(1.0)
            f.write(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return offset


_CHILD = r"""
import json, resource, sys, time
mode, src, out = sys.argv[1:4]
start = time.time()
if mode == "convert":
    from sd_keras import cli
    status = cli.main(["convert", src, "-o", out])
    assert status == 0, status
else:
    from sd_keras.pipeline import StableDiffusion
    sd = StableDiffusion.from_checkpoint(src)
import keras
print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "seconds": round(time.time() - start, 1), "backend": keras.backend.backend()}))
"""


def measure(mode, src, out):
    result = subprocess.run([sys.executable, "-c", _CHILD, mode, src, out], capture_output=True, text=True,
                            cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def baseline_rss():
    """Peak RSS of a process that only imports sd_keras, keras and the backend (the fixed cost)."""
    code = ("import resource, keras, sd_keras.pipeline, sd_keras.weights.checkpoints; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                              check=True).stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="where the ~4.3 GB file goes (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated file and output")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="sd_keras_convert_memory_", dir=args.workdir)
    src, out = os.path.join(workdir, "sd15_random.safetensors"), os.path.join(workdir, "sd15_keras")
    try:
        started = time.time()
        model_bytes = write_random_safetensors(src, sd15_shapes())
        print(f"wrote {src}: {os.path.getsize(src) / 1e9:.2f} GB in {time.time() - started:.0f}s", flush=True)
        base = baseline_rss()
        convert = measure("convert", src, out)
        print(f"convert: peak {convert['peak_rss_bytes'] / 1e9:.2f} GB in {convert['seconds']}s", flush=True)
        load = measure("load", src, out)
        print(f"load: peak {load['peak_rss_bytes'] / 1e9:.2f} GB in {load['seconds']}s", flush=True)
        result = {
            "what": "peak RSS of `sd-keras convert` and `StableDiffusion.from_checkpoint` on a random SD 1.5-shaped "
                    "float32 original-layout .safetensors",
            "backend": convert["backend"],
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
            "file_bytes": os.path.getsize(src),
            "model_bytes": model_bytes,
            "import_baseline_rss_bytes": base,
            "convert_peak_rss_bytes": convert["peak_rss_bytes"],
            "convert_peak_over_model_size": round(convert["peak_rss_bytes"] / model_bytes, 3),
            "convert_seconds": convert["seconds"],
            "load_peak_rss_bytes": load["peak_rss_bytes"],
            "load_peak_over_model_size": round(load["peak_rss_bytes"] / model_bytes, 3),
            "load_seconds": load["seconds"],
            "goal": "convert peak < 2x model size",
            "goal_met": convert["peak_rss_bytes"] < 2 * model_bytes,
        }
        os.makedirs(os.path.dirname(RESULT), exist_ok=True)
        tmp = RESULT + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        os.replace(tmp, RESULT)
        print(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
