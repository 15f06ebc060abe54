"""sd_keras's own saved format: a folder with ``config.json`` and one ``<component>.safetensors`` per sub-model.

Tensors are keyed by Keras variable path (``diffusion_model/down_0_res_0/conv1/kernel``), so the file says
exactly which weight is which; loading checks every key and shape before it assigns anything.

    folder/
      config.json                 {"format": "sd_keras.saved", "format_version": 1, "config": ModelConfig dict}
      text_encoder.safetensors
      diffusion_model.safetensors
      decoder.safetensors
      image_encoder.safetensors   (optional)
"""

import json
import os

import numpy as np

from sd_keras import files

FORMAT = "sd_keras.saved"
FORMAT_VERSION = 1
COMPONENTS = ("text_encoder", "diffusion_model", "decoder", "image_encoder")
_PACKAGED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")


def _variable_key(model, variable):
    path = variable.path
    prefix = model.name + "/"
    return path[len(prefix):] if path.startswith(prefix) else path


def model_tensors(model, dtype=None):
    """``{variable path: numpy array}`` of a Keras model (paths relative to the model)."""
    tensors = {}
    for variable in model.weights:
        value = np.asarray(variable.numpy())
        if dtype is not None and np.issubdtype(value.dtype, np.floating):
            value = value.astype(dtype)
        key = _variable_key(model, variable)
        if key in tensors:
            raise ValueError(f"{model.name}: two variables share the path {key!r}")
        tensors[key] = value
    return tensors


def assign_tensors(model, tensors, *, source="weights"):
    """Assign ``tensors`` (variable path → array) to ``model``; all keys and shapes are checked first.

    Raises:
        ValueError: missing or unexpected keys, or a shape mismatch; the model is left unchanged.
    """
    variables = {_variable_key(model, v): v for v in model.weights}
    missing = sorted(set(variables) - set(tensors))
    unexpected = sorted(set(tensors) - set(variables))
    if missing or unexpected:
        raise ValueError(f"{source}: does not fit {model.name}: {len(missing)} missing (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    for key, variable in variables.items():
        if tuple(tensors[key].shape) != tuple(variable.shape):
            raise ValueError(f"{source}: {key} has shape {tuple(tensors[key].shape)}, "
                             f"{model.name} expects {tuple(variable.shape)}")
    for key, variable in variables.items():
        variable.assign(np.asarray(tensors[key]).astype(variable.dtype))


def save_pretrained(sd, folder, *, weight_dtype=None):
    """Write ``sd`` (a StableDiffusion) to ``folder`` atomically (a temporary folder renamed at the end).

    ``weight_dtype="float16"`` halves the files (loading casts back to the models' dtype).

    Example:
        >>> save_pretrained(StableDiffusion.from_preset("tiny"), "my_model")          # doctest: +SKIP
        >>> StableDiffusion.from_checkpoint("my_model")                                # doctest: +SKIP
    """
    from safetensors.numpy import save_file

    folder = os.path.abspath(folder)
    with files.atomic_folder(folder) as staging:
        files.write_json(os.path.join(staging, "config.json"),
                         {"format": FORMAT, "format_version": FORMAT_VERSION, "config": sd.config.to_dict()})
        for component in COMPONENTS:
            model = getattr(sd, component, None)
            if model is None:
                continue
            save_file(model_tensors(model, weight_dtype), os.path.join(staging, f"{component}.safetensors"),
                      metadata={"format": FORMAT, "component": component})
    return folder


def is_saved_folder(path):
    config = os.path.join(path, "config.json")
    if not (os.path.isdir(path) and os.path.exists(config)):
        return False
    try:
        with open(config) as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_config(folder):
    from sd_keras.config import ModelConfig

    path = os.path.join(folder, "config.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable sd_keras config ({error})") from None
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not an sd_keras saved model (format {data.get('format')!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {data.get('format_version')!r} is not supported "
                         f"(this sd_keras reads {FORMAT_VERSION})")
    return ModelConfig.from_dict(data["config"])


def load_pretrained(cls, folder, *, dtype="float32"):
    """Load a folder written by ``save_pretrained`` into ``cls`` (StableDiffusion)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from sd_keras import models

    config = read_config(folder)
    builders = {"text_encoder": models.build_text_encoder, "diffusion_model": models.build_diffusion_model,
                "decoder": models.build_decoder, "image_encoder": models.build_image_encoder}
    parts = {}
    for component in COMPONENTS:
        path = os.path.join(folder, f"{component}.safetensors")
        if not os.path.exists(path):
            if component == "image_encoder":
                parts[component] = None
                continue
            raise ValueError(f"{folder}: missing {component}.safetensors")
        try:
            tensors = load_file(path)
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"{path}: unreadable safetensors file ({error})") from None
        model = builders[component](config)
        assign_tensors(model, tensors, source=path)
        parts[component] = model
    return cls(config, **parts, dtype=dtype)


def packaged_folder(name):
    return os.path.join(_PACKAGED, name)


def load_packaged(cls, name, *, dtype="float32"):
    """Load a model shipped inside the package (``sd_keras/assets/<name>/``)."""
    folder = packaged_folder(name)
    if not is_saved_folder(folder):
        raise ValueError(f"preset {name!r} has no packaged weights in {folder}")
    return load_pretrained(cls, folder, dtype=dtype)
