"""LoRA: merge low-rank weight deltas into the UNet and text encoder, and take them out again exactly.

Formats (``.safetensors``; ``.ckpt``/``.pt``/``.bin`` are read with the restricted unpickler too):

- diffusers / PEFT: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` and ``text_encoder.<module>...`` (SDXL:
  also ``text_encoder_2.<module>...``);
  ``lora_alpha`` (+ ``alpha_pattern``, ``use_rslora``) from the file's ``lora_adapter_metadata``, else alpha = rank;
- older diffusers: ``<module>.lora.down/up.weight``, ``<module>.lora_linear_layer.down/up.weight`` and the
  attention-processor files of ``unet.save_attn_procs`` (``...attn1.processor.to_q_lora.down.weight``);
- kohya (sd-scripts, A1111): ``lora_unet_<module>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` and
  ``lora_te_<module>...`` (SDXL: ``lora_te1_`` for CLIP ViT-L, ``lora_te2_`` for OpenCLIP bigG), with module
  names in diffusers' or the original UNet's naming, dots as underscores;
  convolution LoRA (LoCon: ResBlock / sampler convs, 3x3 down with 1x1 up) too;
- sd_keras's own (``sd-keras train`` with ``lora_rank``; metadata ``format = "sd_keras.lora"``): ``P.lora_a``
  (in, rank) / ``P.lora_b`` (rank, out) for the UNet Dense layer at variable path ``P``, one ``alpha``.

Merging adds ``scale * alpha / rank * up @ down`` (``alpha / sqrt(rank)`` with rsLoRA) to the Keras kernel of
the module (transposed to Keras' layout). Modules are found through the same key-map tables as checkpoints
(``sd_keras.weights.key_maps``), so every module a LoRA names is checked against the model — and every delta's
shape against its kernel — before anything is changed.

``apply_lora`` keeps each LoRA's deltas and, per model, the original value of every kernel it touched:
``remove_lora`` restores those and re-adds the deltas of the LoRAs still applied, in their order, so removing all
of them gives back the original weights bit for bit, and removing one gives exactly what applying the others
alone gives.

Example:
    >>> from sd_keras import StableDiffusion                                       # doctest: +SKIP
    >>> sd = StableDiffusion.from_checkpoint("v1-5-pruned-emaonly.safetensors")   # doctest: +SKIP
    >>> style = apply_lora(sd, "pixel_art.safetensors", scale=0.8)                 # doctest: +SKIP
    >>> images = sd.text_to_image("a castle, pixel art", seed=1)                   # doctest: +SKIP
    >>> remove_lora(sd, style)                                                     # doctest: +SKIP
"""

import json
import math
import os
import re
from typing import NamedTuple, Optional

import numpy as np

from sd_keras.errors import InputError
from sd_keras.weights import key_maps
from sd_keras.weights.readers import open_tensor_file

LORA_COMPONENTS = ("text_encoder", "text_encoder_2", "diffusion_model")
_UNUSED_LAYER = ("", False)  # a module a LoRA may name that the model deliberately does not build
_STATE_ATTRIBUTE = "_sd_keras_lora_state"


class LoRAPair(NamedTuple):
    down: np.ndarray      # (rank, in) or (rank, in, kh, kw)
    up: np.ndarray        # (out, rank) or (out, rank, 1, 1)
    alpha: Optional[float]  # None: alpha = rank
    rsLoRA: bool = False

    @property
    def rank(self):
        return self.down.shape[0]

    def factor(self):
        alpha = self.rank if self.alpha is None else self.alpha
        return alpha / (math.sqrt(self.rank) if self.rsLoRA else self.rank)


# (suffix of the "down" tensor, suffix of the "up" tensor) per format family
_PAIR_SUFFIXES = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
    ("_lora.down.weight", "_lora.up.weight"),
    (".lora_down.weight", ".lora_up.weight"),
)
_UNSUPPORTED_MARKERS = (("hada_w1_a", "LoHa"), ("lokr_w1", "LoKr"), ("dora_scale", "DoRA"),
                        ("lora_magnitude_vector", "DoRA"))


def _read_tensors(path):
    reader = open_tensor_file(path)
    try:
        tensors = {key: np.asarray(reader.read(key), np.float32) for key in reader.keys()}
        metadata = getattr(reader, "metadata", {}) or {}
    finally:
        reader.close()
    return tensors, metadata


def _component_and_module(key_module, path):
    """(component, module name, naming) of a LoRA module key without its pair suffix."""
    if key_module.startswith("lora_unet_"):
        return "diffusion_model", key_module[len("lora_unet_"):], "kohya"
    for prefix, component in (("lora_te_", "text_encoder"), ("lora_te1_", "text_encoder"),
                              ("lora_te2_", "text_encoder_2")):
        if key_module.startswith(prefix):
            return component, key_module[len(prefix):], "kohya"
    for prefix, component in (("unet.", "diffusion_model"), ("text_encoder.", "text_encoder"),
                              ("text_encoder_2.", "text_encoder_2")):
        if key_module.startswith(prefix):
            return component, key_module[len(prefix):], "dotted"
    if key_module.startswith(("down_blocks.", "mid_block.", "up_blocks.")):
        return "diffusion_model", key_module, "dotted"  # unet.save_attn_procs files have no prefix
    if key_module.startswith("text_model."):
        return "text_encoder", key_module, "dotted"
    raise InputError(f"{path}: LoRA module {key_module!r} belongs to neither the UNet nor the text encoder")


def _processor_module(module):
    # attention-processor LoRA: "...attn1.processor.to_q" -> "...attn1.to_q"; to_out -> to_out.0
    module = module.replace(".processor.", ".")
    return module + ".0" if module.endswith(".to_out") else module


def _alpha_from_metadata(metadata, component_prefix, module):
    settings = metadata.get(component_prefix)
    if not settings:
        return None, False
    alpha = settings.get("lora_alpha")
    for pattern, value in (settings.get("alpha_pattern") or {}).items():
        if module == pattern or module.endswith("." + pattern) or re.fullmatch(rf"(.*\.)?{pattern}", module):
            alpha = value
    return (None if alpha is None else float(alpha)), bool(settings.get("use_rslora", False))


def _parse_metadata(metadata, path):
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except ValueError:
        raise InputError(f"{path}: unreadable lora_adapter_metadata") from None
    settings = {}
    for key, value in flat.items():
        prefix, _, field = key.partition(".")
        settings.setdefault(prefix, {})[field] = value
    for prefix, values in settings.items():
        if values.get("use_dora"):
            raise InputError(f"{path}: DoRA adapters are not supported")
    return settings


class LoRAFile:
    """The LoRA pairs of one file: ``pairs[component][(naming, module)] = LoRAPair``.

    ``naming`` is ``"kohya"`` (module name with underscores) or ``"dotted"`` (diffusers module name).
    """

    def __init__(self, path, pairs):
        self.path = path
        self.pairs = pairs

    @property
    def components(self):
        return [component for component in LORA_COMPONENTS if self.pairs.get(component)]

    def deltas(self, model, component, config, scale=1.0):
        """``{variable key: delta}`` for ``model`` (the Keras ``component``), all checked before returning."""
        pairs = self.pairs.get(component) or {}
        if not pairs:
            return {}
        modules = _module_index(component, config)
        variables = _variables(model)
        deltas = {}
        for (naming, module), pair in pairs.items():
            target = (module, False) if naming == "sd_keras" else modules[naming].get(module)
            if target is _UNUSED_LAYER:
                continue
            if target is None:
                raise InputError(f"{self.path}: LoRA module {module!r} matches no layer of this model's {component} "
                                 "(a LoRA for another architecture?); nothing was applied")
            keras_layer, _is_conv = target
            variable = variables.get(f"{keras_layer}/kernel")
            if variable is None and naming == "sd_keras":
                raise InputError(f"{self.path}: LoRA layer {module!r} is not a layer of this model's {component} "
                                 "(a LoRA for another architecture?); nothing was applied")
            if variable is None:
                raise InputError(f"{self.path}: {module!r} maps to {keras_layer}, which has no kernel")
            shape = tuple(variable.shape)
            try:
                delta = key_maps.lora_kernel_delta(pair.up, pair.down, shape)
            except ValueError as error:
                raise InputError(f"{self.path}: LoRA {module!r} does not fit {keras_layer} ({error})") from None
            if delta.shape != shape:
                raise InputError(f"{self.path}: LoRA {module!r} gives a {delta.shape} delta for {keras_layer}'s "
                                 f"{shape} kernel (a LoRA for another architecture?); nothing was applied")
            key = f"{keras_layer}/kernel"
            delta = (delta * np.float32(scale * pair.factor())).astype(np.float32)
            deltas[key] = deltas[key] + delta if key in deltas else delta
        return deltas

    def merge_into(self, model, component, config, scale=1.0):
        """Add this LoRA to ``model``'s kernels for good (no record kept; used by ``sd-keras convert``)."""
        deltas = self.deltas(model, component, config, scale)
        for key, variable in _variables(model).items():
            if key in deltas:
                variable.assign(np.asarray(variable.numpy(), np.float32) + deltas[key])


SD_KERAS_FORMAT = "sd_keras.lora"  # written by sd_keras.train.save_lora


def _read_sd_keras_lora(path, tensors, metadata):
    """The trainer's format: Keras-layout factors keyed by the UNet layer's variable path."""
    try:
        alpha = float(metadata["alpha"])
    except (KeyError, ValueError):
        raise InputError(f"{path}: {SD_KERAS_FORMAT} file without a numeric 'alpha' in its metadata") from None
    pairs = {}
    for key in tensors:
        stem, dot, kind = key.rpartition(".")
        if not dot or kind not in ("lora_a", "lora_b"):
            raise InputError(f"{path}: tensor {key!r} is not a {SD_KERAS_FORMAT} factor (P.lora_a / P.lora_b)")
        other = f"{stem}.lora_{'b' if kind == 'lora_a' else 'a'}"
        if other not in tensors:
            raise InputError(f"{path}: {key} has no matching {other.rpartition('.')[2]} tensor")
        if kind == "lora_b":
            continue
        a, b = tensors[key], tensors[other]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            raise InputError(f"{path}: {stem}: lora_a {a.shape} and lora_b {b.shape} are not a LoRA pair")
        # kernel (in, out) + alpha / rank * a @ b  ==  the usual up (out, rank) @ down (rank, in), transposed
        pairs[("sd_keras", stem)] = LoRAPair(down=np.ascontiguousarray(a.T), up=np.ascontiguousarray(b.T),
                                             alpha=alpha)
    if not pairs:
        raise InputError(f"{path}: no LoRA weights found in this {SD_KERAS_FORMAT} file")
    return LoRAFile(path, {"text_encoder": {}, "diffusion_model": pairs})


def read_lora(path):
    """Parse a LoRA file (any supported format) into a ``LoRAFile``; ``ValueError`` naming the file otherwise."""
    path = os.fspath(path)
    tensors, metadata = _read_tensors(path)
    if metadata.get("format") == SD_KERAS_FORMAT:
        return _read_sd_keras_lora(path, tensors, metadata)
    settings = _parse_metadata(metadata, path)
    for marker, name in _UNSUPPORTED_MARKERS:
        if any(marker in key for key in tensors):
            raise InputError(f"{path}: {name} weights ({marker}) are not supported; sd_keras applies LoRA to "
                             "SD 1.x / 2.x")
    pairs = {component: {} for component in LORA_COMPONENTS}
    used = set()
    for key in tensors:
        for down_suffix, up_suffix in _PAIR_SUFFIXES:
            if not key.endswith(down_suffix):
                continue
            stem = key[: -len(down_suffix)]
            up_key = stem + up_suffix
            if up_key not in tensors:
                raise InputError(f"{path}: {key} has no matching {up_suffix.lstrip('.')} tensor")
            component, module, naming = _component_and_module(stem, path)
            if down_suffix == "_lora.down.weight":
                module = _processor_module(module)
            if component in ("text_encoder", "text_encoder_2"):
                # transformers >= 5 names CLIPTextModel's modules without the "text_model." level
                level = "text_model_" if naming == "kohya" else "text_model."
                module = module if module.startswith(level) else level + module
            alpha_key = next((k for k in (stem + ".alpha", module + ".alpha") if k in tensors), None)
            alpha, rslora = _alpha_from_metadata(settings, "unet" if component == "diffusion_model"
                                                 else component, module)
            if alpha_key is not None:
                alpha = float(np.asarray(tensors[alpha_key]).reshape(()))
                used.add(alpha_key)
            down, up = tensors[key], tensors[up_key]
            if up.ndim not in (2, 4) or down.ndim != up.ndim or up.shape[1] != down.shape[0]:
                raise InputError(f"{path}: {stem}: up {up.shape} and down {down.shape} are not a LoRA pair")
            pairs[component][(naming, module)] = LoRAPair(down, up, alpha, rslora)
            used.update((key, up_key))
            break
    leftover = [key for key in tensors if key not in used]
    if not used:
        raise InputError(f"{path}: no LoRA weights found (expected lora_A/lora_B, lora.down/up or "
                         f"lora_down/lora_up tensors; the file has e.g. {sorted(tensors)[:3]})")
    if leftover:
        raise InputError(f"{path}: {len(leftover)} tensor(s) of an unknown LoRA layout, e.g. {leftover[:3]}")
    return LoRAFile(path, pairs)


def _module_index(component, config):
    """Module names a LoRA may use for ``component`` → (sd_keras layer, is conv), by naming style."""
    from sd_keras.config_sdxl import SDXLConfig

    unused = []
    if isinstance(config, SDXLConfig):
        from sd_keras.weights import sdxl_key_maps

        part_config = getattr(config, "unet" if component == "diffusion_model" else component)
        table = (sdxl_key_maps.UNET if component == "diffusion_model"
                 else sdxl_key_maps.text_table(part_config, key_maps.DIFFUSERS))
        layouts = key_maps.LAYOUTS if component == "diffusion_model" else (key_maps.DIFFUSERS,)
        if component != "diffusion_model" and not part_config.projection_dim:
            # SDXL uses CLIP ViT-L's penultimate layer: LoRAs trained on the whole encoder also name its last
            # layer, which has no effect on SDXL's output (and no sd_keras layer)
            last = f"encoder_layer_{part_config.num_layers - 1}/"
            for entry in key_maps.expand_modules(key_maps.TEXT_ENCODER_HF, part_config, key_maps.DIFFUSERS):
                if entry.keras.startswith(last) or entry.keras == "final_layer_norm":
                    unused.append(entry.source)
    else:
        tables = {"diffusion_model": (key_maps.UNET, config.unet, key_maps.LAYOUTS),
                  "text_encoder": (key_maps.TEXT_ENCODER_HF, config.text_encoder, (key_maps.DIFFUSERS,))}
        table, part_config, layouts = tables[component]
    index = {"dotted": {}, "kohya": {}}
    for source in unused:
        index["dotted"][source] = index["kohya"][source.replace(".", "_")] = _UNUSED_LAYER
    for layout in layouts:
        for entry in key_maps.expand_modules(table, part_config, layout):
            if entry.module not in key_maps.LORA_MODULES:
                continue
            target = (entry.keras, key_maps.LORA_MODULES[entry.module])
            if layout == key_maps.DIFFUSERS:
                index["dotted"][entry.source] = target
            index["kohya"][entry.source.replace(".", "_")] = target
    return index


class AppliedLoRA:
    """A LoRA merged into a ``StableDiffusion``'s models; ``remove()`` takes it out again."""

    def __init__(self, sd, lora, scale, deltas):
        self.sd = sd
        self.path = lora.path
        self.scale = scale
        self.deltas = deltas  # {component: {variable key: delta}}
        self.active = True

    def remove(self):
        remove_lora(self.sd, self)

    def __repr__(self):
        return f"AppliedLoRA({self.path!r}, scale={self.scale})"


def _state(model):
    state = model.__dict__.get(_STATE_ATTRIBUTE)
    if state is None:
        state = {"base": {}, "applied": []}
        object.__setattr__(model, _STATE_ATTRIBUTE, state)  # plain attribute: not tracked by Keras
    return state


def _variables(model):
    from sd_keras.models.registry import variables

    return variables(model)


def apply_lora(sd, lora, scale=1.0):
    """Merge a LoRA (path or ``LoRAFile``) into ``sd.text_encoder`` / ``sd.diffusion_model`` with ``scale``.

    Returns an ``AppliedLoRA`` for ``remove_lora``. Every module and shape is checked first: on error nothing is
    changed.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)) or not math.isfinite(scale):
        raise InputError(f"LoRA scale must be a finite number, got {scale!r}")
    if not isinstance(lora, LoRAFile):
        lora = read_lora(lora)
    for component in lora.components:
        if getattr(sd, component, None) is None:
            raise InputError(f"{lora.path}: the LoRA has {component} weights and this model has no {component} "
                             "(a LoRA for another architecture?); nothing was applied")
    deltas = {component: lora.deltas(getattr(sd, component), component, sd.config, float(scale))
              for component in lora.components}
    applied = AppliedLoRA(sd, lora, float(scale), deltas)
    for component, component_deltas in deltas.items():
        if not component_deltas:
            continue
        model = getattr(sd, component)
        state = _state(model)
        variables = _variables(model)
        for key, delta in component_deltas.items():
            variable = variables[key]
            current = np.asarray(variable.numpy(), np.float32)
            state["base"].setdefault(key, current.copy())
            variable.assign(current + delta)
        state["applied"].append(applied)
    return applied


def remove_lora(sd, applied):
    """Take ``applied`` (from ``apply_lora``) out of ``sd``: touched kernels are rebuilt from their original
    values plus the deltas of the LoRAs still applied, in order."""
    if not applied.active:
        raise InputError(f"{applied!r} was already removed")
    if applied.sd is not sd:
        raise InputError(f"{applied!r} was applied to another model")
    for component, component_deltas in applied.deltas.items():
        if not component_deltas:
            continue
        model = getattr(sd, component)
        state = _state(model)
        state["applied"] = [other for other in state["applied"] if other is not applied]
        variables = _variables(model)
        for key in component_deltas:
            value = state["base"][key].copy()
            others = [other.deltas[component][key] for other in state["applied"]
                      if key in other.deltas.get(component, {})]
            for delta in others:
                value = value + delta
            variables[key].assign(value)
            if not others:
                del state["base"][key]
    applied.active = False


def parse_lora_spec(spec):
    """``"FILE[:SCALE]"`` → ``(path, scale)``; a colon that does not end in a number belongs to the path."""
    path, sep, tail = spec.rpartition(":")
    if sep and path:
        try:
            scale = float(tail)
        except ValueError:
            return spec, 1.0
        if not math.isfinite(scale):
            raise InputError(f"--lora {spec!r}: the scale must be a finite number")
        return path, scale
    return spec, 1.0
