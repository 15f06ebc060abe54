"""LoRA adapters on the UNet's Dense layers: add them for training, write and read their files, merge them.

``OUT/lora.safetensors``: for every adapted Dense layer with variable path ``P`` (relative to the UNet, e.g.
``down_1_attn_0/transformer_block/attn2/q_proj``), ``P.lora_a`` (in, rank) and ``P.lora_b`` (rank, out), float32;
metadata ``format = "sd_keras.lora"``, ``format_version``, ``rank``, ``alpha``, ``model`` (the model config name).
The adapted kernel is ``kernel + alpha / rank * lora_a @ lora_b`` (Keras' ``enable_lora``).
"""

import numpy as np

from sd_keras import files
from sd_keras.errors import InputError

LORA_FORMAT = "sd_keras.lora"
LORA_VERSION = 1


def dense_layers(model):
    import keras

    # Keras 3 has no public recursive layer iterator; _flatten_layers is what Model.summary and saving use.
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Dense):
            yield layer


def _kernel_variable(layer):
    return next(v for v in layer.weights if v.name == "kernel")


def _layer_key(model, layer):
    from sd_keras.models import variable_key

    return variable_key(model, _kernel_variable(layer)).rsplit("/", 1)[0]


def enable_lora(unet, rank, *, alpha=None, targets=("q_proj", "k_proj", "v_proj", "out_proj"), seed=0):
    """Add LoRA adapters (Keras' ``enable_lora``) to the UNet's Dense layers named in ``targets``; freeze the rest.

    Returns the adapted layers' keys. Example: ``enable_lora(sd.diffusion_model, 4)``.
    """
    import keras

    adapted = []
    for index, layer in enumerate(dense_layers(unet)):
        if layer.name in targets and not layer.lora_enabled:
            # seeded per layer: the same adapters on every backend and run (B starts at zero, as usual)
            layer.enable_lora(rank, lora_alpha=alpha, a_initializer=keras.initializers.HeUniform(seed=seed + index))
            adapted.append(_layer_key(unet, layer))
    if not adapted:
        raise InputError(f"lora_targets {list(targets)}: no Dense layer of {unet.name} has one of these names")
    for variable in unet.weights:
        variable.trainable = "lora_kernel" in variable.path
    return adapted


def save_lora(unet, path, model_name=""):
    """Write the UNet's LoRA adapters to ``path`` (layout in the module docstring), atomically."""
    from safetensors.numpy import save_file

    tensors, rank, alpha = {}, None, None
    for layer in dense_layers(unet):
        if layer.lora_enabled:
            key = _layer_key(unet, layer)
            tensors[f"{key}.lora_a"] = np.asarray(layer.lora_kernel_a.numpy(), np.float32)
            tensors[f"{key}.lora_b"] = np.asarray(layer.lora_kernel_b.numpy(), np.float32)
            rank, alpha = layer.lora_rank, layer.lora_alpha
    if not tensors:
        raise InputError(f"{unet.name} has no LoRA adapters")
    metadata = {"format": LORA_FORMAT, "format_version": str(LORA_VERSION), "rank": str(rank),
                "alpha": str(alpha), "model": model_name}
    with files.atomic_path(path) as temporary:
        save_file(tensors, temporary, metadata=metadata)
    return path


def load_lora(unet, path):
    """Add the adapters of a ``save_lora`` file to ``unet`` (same architecture). Returns the adapted keys."""
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != LORA_FORMAT:
            raise InputError(f"{path}: not an sd_keras LoRA file (format {metadata.get('format')!r})")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    rank, alpha = int(metadata["rank"]), float(metadata["alpha"])
    layers = {_layer_key(unet, layer): layer for layer in dense_layers(unet)}
    keys = sorted({key.rsplit(".", 1)[0] for key in tensors})
    missing = [key for key in keys if key not in layers]
    if missing:
        raise InputError(f"{path}: adapters for layers {unet.name} does not have: {missing[:3]}")
    for key in keys:
        layer = layers[key]
        if not layer.lora_enabled:
            layer.enable_lora(rank, lora_alpha=alpha)
        layer.lora_kernel_a.assign(tensors[f"{key}.lora_a"])
        layer.lora_kernel_b.assign(tensors[f"{key}.lora_b"])
    return keys


def merged_tensors(model):
    """``sd_keras.models.tensors`` with every LoRA adapter merged into its kernel (keys of the plain architecture)."""
    import keras

    from sd_keras import models

    tensors = {k: v for k, v in models.tensors(model).items() if "lora_kernel" not in k}
    for layer in dense_layers(model):
        if layer.lora_enabled:
            merged = keras.ops.convert_to_numpy(layer.kernel)  # Keras' kernel + alpha / rank * A @ B
            tensors[models.variable_key(model, _kernel_variable(layer))] = np.asarray(merged, np.float32)
    return tensors
