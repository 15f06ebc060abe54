"""sd_keras's own saved format: a folder with ``config.json`` and one ``<component>.safetensors`` per sub-model.

Tensors are keyed by Keras variable path (``diffusion_model/down_0_res_0/conv1/kernel``), so the file says
exactly which weight is which; loading checks every key and shape before it assigns anything.

    folder/
      config.json                 {"format": "sd_keras.saved", "format_version": 1, "family": "sd",
                                   "config": the family's config as a dict (a ModelConfig for "sd")}
      text_encoder.safetensors
      diffusion_model.safetensors
      decoder.safetensors
      image_encoder.safetensors   (optional)
"""

import json
import os

from sd_keras import files
from sd_keras.errors import InputError

FORMAT = "sd_keras.saved"
FORMAT_VERSION = 1
_PACKAGED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")


def model_tensors(model, dtype=None):
    """``{variable path: numpy array}`` of a Keras model: ``sd_keras.models.tensors``."""
    from sd_keras import models

    return models.tensors(model, dtype)


def assign_tensors(model, tensors, *, source="weights"):
    """Assign ``tensors`` (variable path → array) to ``model``, every key and shape checked first (InputError
    otherwise; the model unchanged): ``sd_keras.models.assign``."""
    from sd_keras import models

    models.assign(model, tensors, source=source)


def save_pretrained(sd, folder, *, weight_dtype=None):
    """Write ``sd`` (a StableDiffusion) to ``folder`` atomically (a temporary folder renamed at the end).

    ``weight_dtype="float16"`` halves the files (loading casts back to the models' dtype).

    Example:
        >>> save_pretrained(StableDiffusion.from_preset("tiny"), "my_model")          # doctest: +SKIP
        >>> StableDiffusion.from_checkpoint("my_model")                                # doctest: +SKIP
    """
    from safetensors.numpy import save_file

    from sd_keras import models

    folder = os.path.abspath(folder)
    with files.atomic_folder(folder) as staging:
        files.write_json(os.path.join(staging, "config.json"), config_json(sd.config))
        for component in models.components(sd.config):
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


def config_json(config):
    """The ``config.json`` content of a saved model of ``config`` (its family named; none means ``"sd"``)."""
    from sd_keras.models.registry import family_of

    return {"format": FORMAT, "format_version": FORMAT_VERSION, "family": family_of(config).name,
            "config": config.to_dict()}


def read_config(folder):
    """The config of a saved folder, as its family's config class (``ModelConfig`` for SD 1.x / 2.x)."""
    from sd_keras.models.registry import FAMILIES

    path = os.path.join(folder, "config.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable sd_keras config ({error})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path}: not an sd_keras saved model (format "
                         f"{data.get('format') if isinstance(data, dict) else None!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: format_version {data.get('format_version')!r} is not supported "
                         f"(this sd_keras reads {FORMAT_VERSION})")
    family = FAMILIES.get(data.get("family", "sd"))
    if family is None:
        raise InputError(f"{path}: unknown model family {data.get('family')!r} (known: {', '.join(FAMILIES)})")
    try:
        return family.config_class.from_dict(data["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{path}: 'config' is not a valid model config ({error})") from None


class SafetensorsWeights:
    """One component's ``<component>.safetensors``: read when a model is filled (all keys and shapes checked)."""

    def __init__(self, path):
        self.path = path

    def fill(self, model):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        from sd_keras import models

        try:
            tensors = load_file(self.path)
        except (SafetensorError, OSError, ValueError) as error:
            raise InputError(f"{self.path}: unreadable safetensors file ({error})") from None
        models.assign(model, tensors, source=self.path)


def load(folder):
    """Read a folder written by ``save_pretrained``: ``(ModelConfig, models.Weights)``; each component's file is
    read when ``models.build_all`` (or ``StableDiffusion.from_checkpoint``) fills its model.

    Example:
        >>> config, weights = load("my_model")                                        # doctest: +SKIP
        >>> parts = sd_keras.models.build_all(config, weights)                       # doctest: +SKIP
    """
    from sd_keras import models

    config = read_config(folder)
    parts = {}
    for component, spec in models.registry.family_of(config).components.items():
        path = os.path.join(folder, f"{component}.safetensors")
        if os.path.exists(path):
            parts[component] = SafetensorsWeights(path)
        elif not spec.optional:
            raise InputError(f"{folder}: missing {component}.safetensors")
    return config, models.Weights(parts, source=folder)


def packaged_folder(name):
    return os.path.join(_PACKAGED, name)


def load_packaged(name):
    """``(config, weights)`` of a model shipped inside the package (``sd_keras/assets/<name>/``)."""
    folder = packaged_folder(name)
    if not is_saved_folder(folder):
        raise InputError(f"preset {name!r} has no packaged weights in {folder}")
    return load(folder)
