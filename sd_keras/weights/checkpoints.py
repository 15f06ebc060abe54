"""Load Stable Diffusion 1.x / 2.x checkpoints: diffusers folders and original single files.

Inputs:

- a **diffusers folder** (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/`` with ``config.json`` and
  ``.safetensors`` or ``.bin`` weights; ``scheduler/scheduler_config.json`` gives ``prediction_type``;
  ``tokenizer/special_tokens_map.json`` the pad token: SD 2 pads prompts with ``"!"``, id 0);
- an **original single file** (``.safetensors`` or ``.ckpt``) with ``model.diffusion_model.*``,
  ``first_stage_model.*`` and ``cond_stage_model.*`` tensors: SD 1 (``cond_stage_model.transformer.text_model.*``,
  OpenAI CLIP in the Hugging Face layout) or SD 2 (``cond_stage_model.model.*``, OpenCLIP). SD 2 conditions on the
  penultimate OpenCLIP layer: Stability's files hold the whole text tower (24 layers and ``text_projection``), of
  which the first 23 are built and ``ln_final`` applied after them; files written by diffusers'
  ``convert_diffusers_to_original_stable_diffusion.py`` hold only the 23 layers SD 2 uses and no
  ``text_projection``, and all of them are built. The UNet weights are ``model.diffusion_model.*`` or, in
  training checkpoints, also their EMA copy ``model_ema.*`` (named after the parameter with its dots removed:
  ``model_ema.diffusion_modelinput_blocks00weight``). A file with both loads the non-EMA weights unless
  ``ema=True`` (``--ema``); a file with only the EMA copy loads it.

The architecture is read from the folder's ``config.json`` files, or inferred from a single file's tensor
shapes (channels, levels, blocks per level, attention levels, context width, linear or 1x1-conv projections,
4- or 9-channel UNet, text encoder width/depth/vocabulary). What the shapes cannot tell follows the original
code: 32 GroupNorm groups; 8 attention heads per UNet level for SD 1 and 64-wide heads for SD 2; 64-wide heads
in the text encoder. A single file carries no prediction-type marker; it is inferred as diffusers' single-file
loader does: a 1024-wide context (SD 2.x) without ``global_step == 875000`` (the 512 "base" model's training
checkpoint) means ``v_prediction`` (the 768-v models, native size 768x768), anything else ``epsilon``. Pass
``prediction_type="epsilon"`` for an SD 2.x 512 base ``.safetensors`` (it carries no ``global_step``).

What was chosen (prediction type, EMA or not, OpenCLIP layers) is logged by the ``sd_keras.checkpoints`` logger
and kept in ``Checkpoint.notes``; ``sd-keras`` prints it.

The loaded models compute what diffusers computes: exact-erf GELU in the UNet's GEGLU, GroupNorm epsilon 1e-6 in
the VAE and the spatial transformers, the text encoder's own activation (``quick_gelu`` for OpenAI CLIP, ``gelu``
for OpenCLIP).

Tensors are read one at a time (safetensors: one ``safe_open`` per tensor, so no mapping of the whole file stays
resident; ``.ckpt``: one zip member per tensor) and assigned as they come, so loading needs about the model's
size in memory, and ``convert_checkpoint`` writes each component before it builds the next.

The code is in four modules below this entry module (which keeps their public names): ``readers`` (tensor
files), ``plans`` (key-map plans that fill the models), ``diffusers`` (folders and their config translation) and
``single_file`` (original-layout files, architecture inferred from shapes).

Example:
    >>> from sd_keras import StableDiffusion                                           # doctest: +SKIP
    >>> sd = StableDiffusion.from_checkpoint("v1-5-pruned-emaonly.safetensors")       # doctest: +SKIP
    >>> config, weights = load_checkpoint("512-base-ema.safetensors",
    ...                                   prediction_type="epsilon")                   # doctest: +SKIP
    >>> convert_checkpoint("stable-diffusion-v1-5/", "sd15_keras")                    # doctest: +SKIP
"""

import contextlib
import gc
import json
import logging
import os
import struct

import numpy as np

from sd_keras import files
from sd_keras.errors import InputError
from sd_keras.weights.diffusers import open_diffusers
from sd_keras.weights.plans import COMPONENTS, Checkpoint, ComponentSource, check_prediction_type, dotted_unet_name
from sd_keras.weights.readers import (CheckpointFormatError, MultiFile, SafetensorsFile, UnsafeCheckpointError,
                                      open_tensor_file)
from sd_keras.weights.single_file import open_clip_layers, open_single_file

LOG = logging.getLogger("sd_keras.checkpoints")


__all__ = ["load_checkpoint", "convert_checkpoint", "open_checkpoint", "printing_notes", "check_output_folder",
           "write_model_safetensors", "COMPONENTS", "Checkpoint", "ComponentSource", "dotted_unet_name",
           "open_clip_layers", "SafetensorsFile", "MultiFile", "open_tensor_file", "CheckpointFormatError",
           "UnsafeCheckpointError"]


def open_checkpoint(path, *, prediction_type=None, ema=False):
    """Open a diffusers folder or an original single file (SD 1.x / 2.x, or SDXL through
    ``sd_keras.weights.sdxl``: an ``SDXLCheckpoint`` whose config is an ``SDXLConfig``); returns a ``Checkpoint``
    (config + plans), with every key checked against the inferred architecture. Nothing is read beyond headers and
    the pickle index. What was inferred or chosen is logged (``sd_keras.checkpoints`` logger) and kept in
    ``checkpoint.notes``.

    ``prediction_type``: ``"epsilon"`` or ``"v_prediction"``; overrides the folder's scheduler config or, for a
    single file, the inferred one (``v_prediction`` for SD 2.x files, 1024-wide context, unless their
    ``global_step`` is 875000; else ``epsilon``). ``ema``: load a single file's EMA UNet weights (``model_ema.*``)
    where it also holds the non-EMA ones.
    """
    path = os.fspath(path)
    if prediction_type is not None:
        check_prediction_type(prediction_type, "prediction_type argument")
    # here, not at the top: sd_keras.weights.sdxl imports the model registry and so Keras, and `sd-keras convert`
    # checks its arguments through this module before Keras may load
    from sd_keras.weights.sdxl import is_sdxl_checkpoint, open_sdxl_checkpoint

    if is_sdxl_checkpoint(path):  # an SDXL folder or single file: sd_keras.weights.sdxl
        if ema:
            raise InputError(f"{path}: ema=True / --ema: an SDXL checkpoint holds one set of UNet weights")
        return open_sdxl_checkpoint(path, prediction_type=prediction_type)
    if os.path.isdir(path):
        if ema:
            raise InputError(f"{path}: ema=True / --ema: a diffusers folder holds one set of UNet weights; only "
                             "original single files carry an EMA copy (model_ema.*)")
        checkpoint = open_diffusers(path, prediction_type)
    elif os.path.exists(path):
        checkpoint = open_single_file(path, prediction_type, ema)
    else:
        raise FileNotFoundError(f"{path}: no such checkpoint file or folder")
    return checkpoint.checked(path)


@contextlib.contextmanager
def printing_notes(stream):
    """Within the block, what checkpoint loading infers or chooses is printed to ``stream`` (the CLI's report)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("sd-keras: %(message)s"))
    level = LOG.level
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    try:
        yield
    finally:
        LOG.removeHandler(handler)
        LOG.setLevel(level)


def load_checkpoint(path, *, prediction_type=None, loras=(), ema=False):
    """Open a diffusers folder or an original ``.safetensors`` / ``.ckpt``: ``(ModelConfig, models.Weights)``.

    Every key is checked now; tensors are read as ``models.build_all`` (``StableDiffusion.from_checkpoint``) fills
    each model, one at a time, and the files are closed after that (or with ``weights.close()``).
    ``loras``: ``(path, scale)`` pairs merged into each component after it is filled (see
    ``sd_keras.weights.lora``). ``prediction_type`` and ``ema``: see ``open_checkpoint``.

    Example:
        >>> config, weights = load_checkpoint("v1-5-pruned-emaonly.safetensors")      # doctest: +SKIP
        >>> parts = sd_keras.models.build_all(config, weights)                       # doctest: +SKIP
    """
    lora_files = []
    if loras:
        from sd_keras.weights.lora import read_lora

        lora_files = [(read_lora(lora_path), scale) for lora_path, scale in loras]
    checkpoint = open_checkpoint(path, prediction_type=prediction_type, ema=ema)
    return checkpoint.config, checkpoint.weights(lora_files)


def convert_checkpoint(path, output, *, prediction_type=None, weight_dtype=None, loras=(), ema=False):
    """Convert a checkpoint to sd_keras's saved format (a folder ``from_checkpoint`` and ``-m`` load).

    One component at a time: build, fill tensor by tensor, merge LoRAs, write its ``.safetensors`` straight from
    the model's variables, free it. The folder is written under a temporary name and renamed at the end.
    ``weight_dtype="float16"`` halves the files. ``prediction_type`` and ``ema``: see ``open_checkpoint``.

    Example:
        >>> convert_checkpoint("v1-5-pruned-emaonly.safetensors", "sd15")             # doctest: +SKIP
    """
    from sd_keras.weights import saved

    output = os.path.abspath(os.fspath(output))
    check_output_folder(output)
    from sd_keras import models

    config, weights = load_checkpoint(path, prediction_type=prediction_type, loras=loras, ema=ema)
    with weights:
        with files.atomic_folder(output) as staging:
            for component in weights:
                model = models.build(component, config, weights=weights[component])
                write_model_safetensors(model, os.path.join(staging, f"{component}.safetensors"),
                                        metadata={"format": saved.FORMAT, "component": component},
                                        dtype=weight_dtype)
                del model
                gc.collect()
            files.write_json(os.path.join(staging, "config.json"), saved.config_json(config))
    return output


def check_output_folder(output):
    """Refuse to replace anything but an empty folder or an earlier sd_keras saved model."""
    from sd_keras.weights import saved

    if not os.path.exists(output):
        return
    if os.path.isdir(output) and (not os.listdir(output) or saved.is_saved_folder(output)):
        return
    raise InputError(f"{output}: exists and is not an sd_keras saved model; refusing to replace it (choose "
                     "another output path)")


_SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64",
                       np.dtype(np.int32): "I32", np.dtype(np.int64): "I64"}


def write_model_safetensors(model, path, *, metadata=None, dtype=None):
    """Write a Keras model's variables as one safetensors file, one variable in memory at a time.

    Same content as ``safetensors.numpy.save_file(model_tensors(model))`` without a second copy of the model.
    """
    from sd_keras.models.registry import variables

    specs, offset = [], 0
    header = {"__metadata__": dict(metadata or {})}
    for key, variable in variables(model).items():
        var_dtype = np.dtype(dtype) if dtype is not None and "float" in str(variable.dtype) else np.dtype(
            str(variable.dtype))
        nbytes = int(np.prod(variable.shape, dtype=np.int64)) * var_dtype.itemsize
        header[key] = {"dtype": _SAFETENSORS_DTYPES[var_dtype], "shape": list(variable.shape),
                       "data_offsets": [offset, offset + nbytes]}
        specs.append((variable, var_dtype))
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for variable, var_dtype in specs:
            array = np.ascontiguousarray(np.asarray(variable.numpy()), dtype=var_dtype.newbyteorder("<"))
            f.write(array.data)
            del array
