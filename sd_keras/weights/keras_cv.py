"""KerasCV interop: KerasCV's published h5 weight files and in-memory KerasCV models -> sd_keras models.

The sd-v1 / sd-v2 models list their weights (``model.weights``) in exactly KerasCV's order, so both paths are a
positional copy, checked first: the count and every shape must fit before anything is assigned. This is the
only module that imports keras_cv, and only inside ``from_keras_cv_models``; the h5 reader needs h5py alone.

Example:
    >>> from sd_keras import models                                              # doctest: +SKIP
    >>> decoder = models.build_decoder("sd-v1")                                    # doctest: +SKIP
    >>> load_keras_cv_h5(decoder, "kcv_decoder.h5", "decoder")                     # doctest: +SKIP
    >>> config, weights = from_keras_cv_models(keras_cv.models.StableDiffusion())  # doctest: +SKIP
"""

import dataclasses
import sys
from typing import NamedTuple

import numpy as np

from sd_keras.errors import InputError

COMPONENTS = ("text_encoder", "diffusion_model", "decoder", "image_encoder")


class WeightFile(NamedTuple):
    url: str
    sha256: str


# From keras_cv 0.9 (models/stable_diffusion/{text_encoder,diffusion_model,decoder,image_encoder}.py).
# StableDiffusionV2 reuses v1's decoder and image encoder.
_DECODER = WeightFile(
    "https://huggingface.co/fchollet/stable-diffusion/resolve/main/kcv_decoder.h5",
    "ad350a65cc8bc4a80c8103367e039a3329b4231c2469a1093869a345f55b1962",
)
_IMAGE_ENCODER = WeightFile(
    "https://huggingface.co/fchollet/stable-diffusion/resolve/main/vae_encoder.h5",
    "c60fb220a40d090e0f86a6ab4c312d113e115c87c40ff75d11ffcf380aab7ebb",
)
KERAS_CV_WEIGHTS = {
    "sd-v1": {
        "text_encoder": WeightFile(
            "https://huggingface.co/fchollet/stable-diffusion/resolve/main/kcv_encoder.h5",
            "4789e63e07c0e54d6a34a29b45ce81ece27060c499a709d556c7755b42bb0dc4",
        ),
        "diffusion_model": WeightFile(
            "https://huggingface.co/fchollet/stable-diffusion/resolve/main/kcv_diffusion_model.h5",
            "8799ff9763de13d7f30a683d653018e114ed24a6a819667da4f5ee10f9e805fe",
        ),
        "decoder": _DECODER,
        "image_encoder": _IMAGE_ENCODER,
    },
    "sd-v2": {
        "text_encoder": WeightFile(
            "https://huggingface.co/ianstenbit/keras-sd2.1/resolve/main/text_encoder_v2_1.h5",
            "985002e68704e1c5c3549de332218e99c5b9b745db7171d5f31fcd9a6089f25b",
        ),
        "diffusion_model": WeightFile(
            "https://huggingface.co/ianstenbit/keras-sd2.1/resolve/main/diffusion_model_v2_1.h5",
            "c31730e91111f98fe0e2dbde4475d381b5287ebb9672b1821796146a25c5132d",
        ),
        "decoder": _DECODER,
        "image_encoder": _IMAGE_ENCODER,
    },
}


def read_keras_h5(path):
    """Open a legacy Keras h5 weight file: ``(h5py.File, [(weight name, h5py.Dataset), ...])`` in file order.

    The layout is tf.keras ``save_weights``: ``layer_names`` on the root (or on ``model_weights/`` for a whole
    saved model), and per layer a group whose ``weight_names`` list its datasets in the layer's weight order.
    Long lists may be split into ``layer_names0``, ``layer_names1``... as Keras does. The caller closes the file.
    """
    import h5py

    handle = h5py.File(path, "r")
    try:
        group = handle
        if "layer_names" not in _attr_keys(handle) and "model_weights" in handle:
            group = handle["model_weights"]
        if "layer_names" not in _attr_keys(group):
            raise InputError(f"{path}: not a legacy Keras h5 weight file (no 'layer_names' attribute)")
        entries = []
        for layer_name in _string_list(group, "layer_names"):
            layer_group = group[layer_name]
            entries.extend((name, layer_group[name]) for name in _string_list(layer_group, "weight_names"))
    except Exception:
        handle.close()
        raise
    return handle, entries


def _attr_keys(group):
    # Keras splits long attribute lists into name0, name1, ...; both spellings count.
    return {key.rstrip("0123456789") for key in group.attrs}


def _string_list(group, name):
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks, index = [], 0
        while f"{name}{index}" in group.attrs:
            chunks.append(group.attrs[f"{name}{index}"])
            index += 1
    return [item.decode("utf8") if isinstance(item, bytes) else str(item) for chunk in chunks for item in chunk]


def _check_fits(model, source_shapes, source, component):
    """Raise ``ValueError`` naming ``source`` and the first mismatch unless every shape fits ``model``."""
    targets = model.weights
    for index, ((name, shape), target) in enumerate(zip(source_shapes, targets)):
        if tuple(shape) != tuple(target.shape):
            raise InputError(
                f"{source}: weight #{index} ({name}) has shape {tuple(shape)} but {component} weight "
                f"{target.path} needs {tuple(target.shape)}; these are not KerasCV {component} weights for "
                f"this model's config")
    if len(source_shapes) != len(targets):
        raise InputError(
            f"{source}: holds {len(source_shapes)} weight tensors but the {component} model '{model.name}' has "
            f"{len(targets)}; these are not KerasCV {component} weights for this model's config")


def _check_component(component):
    if component not in COMPONENTS:
        raise InputError(f"component must be one of {COMPONENTS}, got {component!r}")


def load_keras_cv_h5(model, path, component):
    """Load a KerasCV weight file (legacy h5 layout) into an sd_keras ``model`` built for ``component``.

    Reads with h5py only (no TensorFlow, no keras_cv). Every shape is checked before anything is read or
    assigned, and every tensor is read before the first assignment, so a failing load leaves the model as it
    was. ``ValueError`` names the file and the first weight that does not fit (another component's file, or
    weights of another version than the model's config).

    Example:
        >>> unet = sd_keras.models.build_diffusion_model("sd-v1")                   # doctest: +SKIP
        >>> load_keras_cv_h5(unet, "kcv_diffusion_model.h5", "diffusion_model")     # doctest: +SKIP
    """
    _check_component(component)
    try:
        handle, entries = read_keras_h5(path)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise InputError(f"{path}: cannot read as an HDF5 weight file ({error})") from error
    with handle:
        _check_fits(model, [(name, dataset.shape) for name, dataset in entries], str(path), component)
        values = [dataset[()] for _, dataset in entries]
    for variable, value in zip(model.weights, values):
        variable.assign(value)
    return model


class _Fill:
    """One component's KerasCV weights as ``sd_keras.models.Weights`` holds them: ``fill(model)`` loads them."""

    def __init__(self, load, source, component):
        self._load, self.source, self.component = load, source, component

    def fill(self, model):
        self._load(model, self.source, self.component)


def keras_cv_h5_weights(paths, *, source="KerasCV weights"):
    """``sd_keras.models.Weights`` of KerasCV h5 files, ``{component: path}``; each is read (and checked) when
    its model is filled."""
    from sd_keras.models.registry import Weights

    for component in paths:
        _check_component(component)
    return Weights({component: _Fill(load_keras_cv_h5, path, component) for component, path in paths.items()},
                   source=source)


def copy_keras_cv_weights(source, model, component):
    """Copy the weights of a KerasCV sub-model (``source``) into the matching sd_keras ``model`` (checked)."""
    _check_component(component)
    source_weights = source.weights
    _check_fits(model, [(_weight_name(w), w.shape) for w in source_weights],
                f"KerasCV {type(source).__name__} '{source.name}'", component)
    for variable, value in zip(model.weights, source_weights):
        variable.assign(np.asarray(value))
    return model


def _copy_from_property(model, kcv, component):
    copy_keras_cv_weights(getattr(kcv, component), model, component)


def _weight_name(variable):
    return getattr(variable, "path", None) or variable.name


def _keras_cv_version(kcv):
    expected = "a keras_cv.models.StableDiffusion or keras_cv.models.StableDiffusionV2"
    given = f"{type(kcv).__module__}.{type(kcv).__qualname__}"
    if "keras_cv" not in sys.modules:  # then kcv cannot be a KerasCV model; don't pay for importing it
        raise TypeError(f"expected {expected}, got {given}")
    import keras_cv

    if isinstance(kcv, keras_cv.models.StableDiffusionV2):
        return "sd-v2"
    if isinstance(kcv, keras_cv.models.StableDiffusion):
        return "sd-v1"
    raise TypeError(f"expected {expected}, got {given}")


def from_keras_cv_models(kcv):
    """The weights of a KerasCV ``StableDiffusion`` (-> sd-v1) or ``StableDiffusionV2`` (-> sd-v2) as a loader
    returns them: ``(ModelConfig, sd_keras.models.Weights)``; each component is copied (and checked) when its
    model is filled (``sd_keras.models.build_all``).

    Sub-models are read through KerasCV's properties (so one not built yet is built and loaded by KerasCV).
    The config's ``image_size`` is the KerasCV model's (img_height, img_width); the sd_keras models themselves
    accept any size. ``TypeError`` for any other object.

    Example:
        >>> config, weights = from_keras_cv_models(keras_cv.models.StableDiffusion())  # doctest: +SKIP
        >>> sd_keras.models.build_all(config, weights)["diffusion_model"]           # doctest: +SKIP
    """
    from sd_keras.config import get_config
    from sd_keras.models.registry import Weights

    version = _keras_cv_version(kcv)
    config = dataclasses.replace(get_config(version), image_size=(int(kcv.img_height), int(kcv.img_width)))
    # each sub-model is read when its sd_keras model is filled: one KerasCV sub-model at a time beside ours
    parts = {component: _Fill(_copy_from_property, kcv, component) for component in COMPONENTS}
    return config, Weights(parts, source=f"KerasCV {type(kcv).__name__}")
