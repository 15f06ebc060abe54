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
import re
import struct

import numpy as np

from sd_keras import files
from sd_keras.config import PREDICTION_TYPES, ModelConfig, TextEncoderConfig, UNetConfig, VAEConfig
from sd_keras.weights import key_maps
from sd_keras.weights.pickle_reader import CheckpointFormatError, UnsafeCheckpointError, open_torch_file

COMPONENTS = ("text_encoder", "diffusion_model", "decoder", "image_encoder")
SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
OPENAI_CLIP_PAD_ID = 49407  # <|endoftext|>
OPEN_CLIP_PAD_ID = 0  # "!": the SD 2 / OpenCLIP tokenizer pads with 0
SD2_CONTEXT_WIDTH = 1024  # OpenCLIP ViT-H/14: what marks an SD 2.x UNet
SD2_BASE_GLOBAL_STEP = 875000  # the SD 2.x 512 base training checkpoint (an epsilon model)
EMA_PREFIX = "model_ema."
LOG = logging.getLogger("sd_keras.checkpoints")

__all__ = ["load_checkpoint", "convert_checkpoint", "open_checkpoint", "Checkpoint", "CheckpointFormatError",
           "UnsafeCheckpointError"]


# ------------------------------------------------------------------------------------------ tensor files
class SafetensorsFile:
    """One ``.safetensors`` file read through ``safetensors`` with numpy (no torch); ``read`` opens the file per
    tensor, so memory-mapped pages of tensors already read are released. bfloat16 is widened to float32."""

    def __init__(self, path):
        from safetensors import SafetensorError, safe_open

        self.path = str(path)
        self._safe_open = safe_open
        try:
            with safe_open(self.path, framework="numpy") as f:
                self._info = {}
                for key in f.keys():
                    tensor_slice = f.get_slice(key)
                    self._info[key] = (tuple(tensor_slice.get_shape()), tensor_slice.get_dtype())
                self.metadata = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointFormatError(f"{self.path}: not a readable safetensors file ({error})") from None
        self._offsets = None

    def keys(self):
        return list(self._info)

    def shape(self, key):
        return self._info[key][0]

    def _raw_bfloat16(self, key):
        if self._offsets is None:  # numpy has no bfloat16: read its bits from the documented layout
            with open(self.path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
            self._offsets = {k: (8 + length + v["data_offsets"][0], 8 + length + v["data_offsets"][1])
                             for k, v in header.items() if k != "__metadata__"}
        start, end = self._offsets[key]
        with open(self.path, "rb") as f:
            f.seek(start)
            bits = np.frombuffer(f.read(end - start), dtype="<u2").reshape(self.shape(key))
        return (bits.astype(np.uint32) << 16).view(np.float32)

    def read(self, key):
        from safetensors import SafetensorError

        try:
            if self._info[key][1] == "BF16":
                return self._raw_bfloat16(key)
            with self._safe_open(self.path, framework="numpy") as f:
                return f.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointFormatError(f"{self.path}: cannot read {key!r} ({error})") from None

    def close(self):
        pass


class MultiFile:
    """Several tensor files seen as one (sharded diffusers weights): ``weight_map`` key -> reader."""

    def __init__(self, readers):
        self._readers = readers
        self._owner = {}
        for reader in readers:
            for key in reader.keys():
                self._owner[key] = reader
        self.path = os.path.dirname(readers[0].path) if readers else ""

    def keys(self):
        return list(self._owner)

    def shape(self, key):
        return self._owner[key].shape(key)

    def read(self, key):
        return self._owner[key].read(key)

    def close(self):
        for reader in self._readers:
            reader.close()


def _looks_like_safetensors(path):
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and length < os.path.getsize(path)


def open_tensor_file(path):
    """A reader (``keys``/``shape``/``read``/``close``) for a ``.safetensors`` or PyTorch file, by content."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if os.path.getsize(path) == 0:
        raise CheckpointFormatError(f"{path}: empty file, not a checkpoint")
    if path.endswith(SAFETENSORS_SUFFIXES) or _looks_like_safetensors(path):
        return SafetensorsFile(path)
    return open_torch_file(path)


# ------------------------------------------------------------------------------------------- components
class ComponentSource:
    """The tensors of one component inside a reader: keys relative to ``prefix``, optionally renamed.

    ``undotted``: the file names tensors without dots (the original EMA copy, ``model_ema.diffusion_model`` +
    ``input_blocks00weight``); they are read back as the dotted UNet names.
    """

    def __init__(self, reader, prefix="", aliases=(), add_prefix="", undotted=False):
        self.reader = reader
        self.prefix = prefix
        self.undotted = undotted
        self._index = {}
        for key in reader.keys():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):]
            if undotted:
                name = dotted_unet_name(name) or name  # an unknown word stays as it is: reported as unexpected
            if add_prefix and not name.startswith(add_prefix):
                name = add_prefix + name
            for old, new in aliases:
                name = name.replace(old, new)
            self._index[name] = key

    def file_key(self, name):
        """The name ``name`` has (or would have) in the file."""
        if name in self._index:
            return self._index[name]
        return self.prefix + (name.replace(".", "") if self.undotted else name)

    def keys(self):
        return list(self._index)

    def __contains__(self, name):
        return name in self._index

    def shape(self, name):
        return tuple(self.reader.shape(self._index[name]))

    def read(self, name):
        return self.reader.read(self._index[name])

    def full_key(self, name):
        return self._index[name]


class ComponentPlan:
    """How to fill one sd_keras model: its key-map table, the config part, the layout and where tensors are."""

    def __init__(self, name, table, part_config, layout, source, unused=()):
        self.name = name
        self.table = table
        self.part_config = part_config
        self.layout = layout
        self.source = source
        self.entries = key_maps.expand_tensors(table, part_config, layout)
        self.unused = tuple(unused)  # regexes of source names that are known and deliberately not loaded

    def check_keys(self):
        """Every required tensor is present; every tensor of the component is used or known to be unused."""
        missing = [e.source for e in self.entries if not e.optional and e.source not in self.source]
        used = {e.source for e in self.entries}
        unexpected = [name for name in self.source.keys()
                      if name not in used and not any(re.search(pattern, name) for pattern in self.unused)]
        where = self.source.reader.path
        if missing:
            raise ValueError(f"{where}: {self.name} is missing {len(missing)} tensor(s), e.g. "
                             f"{[self.source.file_key(m) for m in missing[:3]]}; the file does not match the "
                             "inferred architecture (an unsupported model or an incomplete file)")
        if unexpected:
            raise ValueError(f"{where}: {self.name} has {len(unexpected)} tensor(s) sd_keras does not know, e.g. "
                             f"{[self.source.full_key(u) for u in unexpected[:3]]} (an unsupported architecture, "
                             "e.g. SDXL or transformer depth > 1)")

    def fill(self, model):
        """Assign every variable of ``model`` from the source; shapes are all checked before any assignment."""
        from sd_keras.models.registry import variables as model_variables

        variables = model_variables(model)
        where = self.source.reader.path
        plan = []
        for entry in self.entries:
            if entry.keras not in variables:
                if entry.optional and entry.source not in self.source:
                    continue
                raise ValueError(f"{where}: {self.source.full_key(entry.source)} has no place in sd_keras's "
                                 f"{model.name} ({entry.keras})")
            if entry.source not in self.source:
                raise ValueError(f"{where}: {model.name} needs {self.source.file_key(entry.source)}, which the "
                                 "checkpoint does not have")
            target = tuple(variables[entry.keras].shape)
            try:
                shape = key_maps.transformed_shape(entry.transform, self.source.shape(entry.source), target)
            except ValueError as error:
                shape = f"unusable ({error})"
            if shape != target:
                raise ValueError(f"{where}: {self.source.full_key(entry.source)} has shape "
                                 f"{self.source.shape(entry.source)}, which gives {shape} where {model.name}'s "
                                 f"{entry.keras} is {target}")
            plan.append((entry, variables.pop(entry.keras)))
        if variables:
            raise ValueError(f"{where}: nothing in the checkpoint fills {model.name}'s {sorted(variables)[:3]}")
        cached_name, cached = None, None
        for entry, variable in plan:
            if entry.source != cached_name:  # OpenCLIP's fused in_proj serves q, k and v in turn
                cached_name, cached = entry.source, None
                cached = self.source.read(entry.source)
            value = key_maps.TRANSFORMS[entry.transform](cached, tuple(variable.shape))
            variable.assign(np.ascontiguousarray(value, dtype=variable.dtype))
            del value
        del cached


class _WithLoRAs:
    """A component's plan followed by LoRA merges."""

    def __init__(self, plan, loras, config, component):
        self.plan, self.loras, self.config, self.component = plan, loras, config, component

    def fill(self, model):
        self.plan.fill(model)
        for lora, scale in self.loras:
            lora.merge_into(model, self.component, self.config, scale)


class Checkpoint:
    """An opened checkpoint: its ``config`` (a ``ModelConfig``) and a plan per component.

    ``build(component)`` returns the Keras model filled with the checkpoint's weights. Close it (or use ``with``)
    to release the files. ``notes``: ``(logging level, message)`` pairs saying what was inferred or chosen
    (prediction type, EMA weights, text encoder layers).
    """

    def __init__(self, path, config, plans, readers, notes=()):
        self.path = path
        self.config = config
        self.plans = plans
        self._readers = readers
        self.notes = list(notes)

    @property
    def components(self):
        return [name for name in COMPONENTS if name in self.plans]

    def check(self):
        for plan in self.plans.values():
            plan.check_keys()

    def build(self, component, *, dtype=None):
        from sd_keras import models

        return models.build(component, self.config, dtype, weights=self.plans[component])

    def weights(self, loras=()):
        """The plans as ``sd_keras.models.Weights`` (closing it closes this checkpoint); ``loras``: ``(LoRAFile,
        scale)`` pairs merged into each component right after it is filled."""
        from sd_keras.models.registry import Weights

        parts = {name: _WithLoRAs(self.plans[name], loras, self.config, name) if loras else self.plans[name]
                 for name in self.components}
        return Weights(parts, source=self.path, notes=self.notes, on_close=self.close)

    def close(self):
        for reader in self._readers:
            reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------- diffusers
_DIFFUSERS_WEIGHT_NAMES = {
    "unet": ("diffusion_pytorch_model", ),
    "vae": ("diffusion_pytorch_model", ),
    "text_encoder": ("model", "pytorch_model"),
}


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as error:
        raise ValueError(f"{path}: cannot read ({error.strerror})") from None
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def _diffusers_reader(folder, part):
    directory = os.path.join(folder, part)
    names = []
    for stem in _DIFFUSERS_WEIGHT_NAMES[part]:
        for variant in ("", ".fp16"):
            names += [f"{stem}{variant}.safetensors", f"{stem}{variant}.safetensors.index.json",
                      f"{stem}{variant}.bin", f"{stem}{variant}.bin.index.json"]
    for name in names:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        if name.endswith(".index.json"):
            weight_map = _read_json(path).get("weight_map", {})
            files = sorted(set(weight_map.values()))
            if not files:
                raise ValueError(f"{path}: empty weight_map")
            return MultiFile([open_tensor_file(os.path.join(directory, f)) for f in files])
        return open_tensor_file(path)
    raise ValueError(f"{directory}: no weights file (expected one of {', '.join(names[:4])}, ...)")


def _as_list(value, count, what, path):
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{path}: {what} has {len(value)} entries for {count} blocks")
        return list(value)
    return [value] * count


# diffusers UNet2DConditionModel options that sd_keras's UNet does not implement: (field, supported values).
_UNET_FIXED = (
    ("flip_sin_to_cos", (True,)), ("freq_shift", (0,)), ("act_fn", ("silu",)),
    ("time_embedding_type", ("positional",)), ("class_embed_type", (None,)), ("addition_embed_type", (None,)),
    ("num_class_embeds", (None,)), ("dual_cross_attention", (False,)), ("resnet_time_scale_shift", ("default",)),
    ("conv_in_kernel", (3,)), ("conv_out_kernel", (3,)), ("time_cond_proj_dim", (None,)),
    ("encoder_hid_dim", (None,)), ("mid_block_type", ("UNetMidBlock2DCrossAttn",)),
    ("center_input_sample", (False,)), ("downsample_padding", (1,)), ("mid_block_scale_factor", (1, 1.0)),
    ("resnet_skip_time_act", (False,)), ("resnet_out_scale_factor", (1, 1.0)), ("timestep_post_act", (None,)),
    ("cross_attention_norm", (None,)), ("attention_type", ("default",)), ("time_embedding_act_fn", (None,)),
    ("class_embeddings_concat", (False,)), ("addition_time_embed_dim", (None,)),
    ("reverse_transformer_layers_per_block", (None,)),
)


def _check_fixed(config, fixed, path, what):
    for field, allowed in fixed:
        if field not in config:
            continue
        values = config[field] if isinstance(config[field], list) else [config[field]]
        if any(value not in allowed for value in values):
            raise ValueError(f"{path}: {what} {field}={config[field]!r} is not supported (sd_keras implements "
                             f"{allowed[0]!r})")


def _unet_heads(heads, channels, attention_levels, path):
    """diffusers gives heads per level (its ``attention_head_dim`` historically means the head count)."""
    used = [(h, c) for h, c, a in zip(heads, channels, attention_levels) if a] + [(heads[-1], channels[-1])]
    for h, c in used:
        if c % h:
            raise ValueError(f"{path}: {c} channels are not divisible by {h} attention heads")
    if len({h for h, _ in used}) == 1:
        return {"num_heads": used[0][0], "head_size": None}
    if len({c // h for h, c in used}) == 1:
        return {"num_heads": None, "head_size": used[0][1] // used[0][0]}
    raise ValueError(f"{path}: attention heads {heads} give neither a fixed head count nor a fixed head width per "
                     "level, which sd_keras's UNetConfig cannot express")


def unet_config_from_diffusers(config, path):
    """``UNetConfig`` of a diffusers ``UNet2DConditionModel`` config.json (raises on unsupported options)."""
    _check_fixed(config, _UNET_FIXED, path, "unet")
    for field in ("only_cross_attention", "mid_block_only_cross_attention"):
        if config.get(field) not in (None, False) and config.get(field) != [False] * len(config.get(field) or []):
            raise ValueError(f"{path}: unet {field}={config[field]!r} is not supported")
    depth = config.get("transformer_layers_per_block", 1)
    if any(d != 1 for d in (depth if isinstance(depth, list) else [depth])):
        raise ValueError(f"{path}: unet transformer_layers_per_block={depth!r} is not supported (only 1)")
    channels = tuple(config["block_out_channels"])
    down = config["down_block_types"]
    kinds = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
    if len(down) != len(channels) or any(kind not in kinds for kind in down):
        raise ValueError(f"{path}: unet down_block_types {down} are not supported (CrossAttnDownBlock2D / "
                         "DownBlock2D, one per block_out_channels entry)")
    attention_levels = tuple(kinds[kind] for kind in down)
    expected_up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)]
    if list(config["up_block_types"]) != expected_up:
        raise ValueError(f"{path}: unet up_block_types {config['up_block_types']} do not mirror the down blocks")
    layers = config.get("layers_per_block", 2)
    layers = _as_list(layers, len(channels), "layers_per_block", path)
    if len(set(layers)) != 1:
        raise ValueError(f"{path}: unet layers_per_block {layers} differs per level, which is not supported")
    context_dim = config.get("cross_attention_dim", 1280)
    if isinstance(context_dim, list):
        if len(set(context_dim)) != 1:
            raise ValueError(f"{path}: unet cross_attention_dim {context_dim} differs per level")
        context_dim = context_dim[0]
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    heads = _unet_heads(_as_list(heads, len(channels), "attention_head_dim", path), channels, attention_levels,
                        path)
    return UNetConfig(
        in_channels=config.get("in_channels", 4), out_channels=config.get("out_channels", 4),
        block_out_channels=channels, layers_per_block=layers[0], attention_levels=attention_levels, **heads,
        context_dim=context_dim, linear_proj=bool(config.get("use_linear_projection", False)),
        timestep_dim=channels[0], time_embed_dim=config.get("time_embedding_dim") or channels[0] * 4,
        ff_mult=4, gelu_approximate=False, norm_groups=config.get("norm_num_groups", 32),
        norm_eps=config.get("norm_eps", 1e-5), transformer_norm_eps=1e-6,
    )


_VAE_FIXED = (("act_fn", ("silu",)), ("shift_factor", (None,)), ("use_quant_conv", (True,)),
              ("use_post_quant_conv", (True,)), ("mid_block_add_attention", (True,)), ("latents_mean", (None,)))


def vae_config_from_diffusers(config, path):
    """``VAEConfig`` of a diffusers ``AutoencoderKL`` config.json."""
    _check_fixed(config, _VAE_FIXED, path, "vae")
    channels = tuple(config["block_out_channels"])
    if any(kind != "DownEncoderBlock2D" for kind in config.get("down_block_types", [])) or any(
            kind != "UpDecoderBlock2D" for kind in config.get("up_block_types", [])):
        raise ValueError(f"{path}: vae blocks {config.get('down_block_types')} / {config.get('up_block_types')} "
                         "are not supported")
    if config.get("in_channels", 3) != config.get("out_channels", 3):
        raise ValueError(f"{path}: vae in_channels != out_channels is not supported")
    return VAEConfig(block_out_channels=channels, layers_per_block=config.get("layers_per_block", 1),
                     image_channels=config.get("in_channels", 3), latent_channels=config.get("latent_channels", 4),
                     scaling_factor=float(config.get("scaling_factor", 0.18215)),
                     norm_groups=config.get("norm_num_groups", 32), norm_eps=1e-6)


_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh"}


def text_config_from_diffusers(config, path):
    """``TextEncoderConfig`` of a transformers ``CLIPTextModel`` config.json."""
    if config.get("model_type", "clip_text_model") != "clip_text_model":
        raise ValueError(f"{path}: text encoder model_type {config.get('model_type')!r} is not supported "
                         "(clip_text_model)")
    activation = config.get("hidden_act", "quick_gelu")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{path}: text encoder hidden_act {activation!r} is not supported")
    return TextEncoderConfig(vocab_size=config.get("vocab_size", 49408),
                             max_length=config.get("max_position_embeddings", 77),
                             width=config["hidden_size"], num_layers=config["num_hidden_layers"],
                             num_heads=config["num_attention_heads"], intermediate_size=config["intermediate_size"],
                             activation=_ACTIVATIONS[activation], layer_norm_eps=config.get("layer_norm_eps", 1e-5))


def _pad_token_id(folder, text_config):
    from sd_keras.tokenizer import CLIPTokenizer

    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(folder, "tokenizer", name)
        if not os.path.exists(path):
            continue
        pad = _read_json(path).get("pad_token")
        if isinstance(pad, dict):
            pad = pad.get("content")
        if isinstance(pad, str):
            try:  # the vocabulary entry itself, as the reference tokenizer looks it up ("!" is id 0)
                return CLIPTokenizer().token_to_id(pad)
            except (KeyError, ValueError):
                raise ValueError(f"{path}: pad token {pad!r} is not in the CLIP vocabulary") from None
    # no tokenizer folder: OpenCLIP-derived text encoders (exact GELU) come with the pad-with-"!" tokenizer
    return OPEN_CLIP_PAD_ID if text_config.activation == "gelu" else OPENAI_CLIP_PAD_ID


def _open_diffusers(folder, prediction_type):
    index_path = os.path.join(folder, "model_index.json")
    if os.path.exists(index_path):
        index = _read_json(index_path)
        if "text_encoder_2" in index or "XL" in str(index.get("_class_name", "")):
            raise ValueError(f"{folder}: {index.get('_class_name')} (SDXL) folders are not supported; sd_keras "
                             "loads SD 1.x / 2.x")
    for part in ("unet", "vae", "text_encoder"):
        if not os.path.exists(os.path.join(folder, part, "config.json")):
            raise ValueError(f"{folder}: not a diffusers Stable Diffusion folder ({part}/config.json is missing)")
    unet_json = _read_json(os.path.join(folder, "unet", "config.json"))
    vae_json = _read_json(os.path.join(folder, "vae", "config.json"))
    unet = unet_config_from_diffusers(unet_json, os.path.join(folder, "unet", "config.json"))
    vae = vae_config_from_diffusers(vae_json, os.path.join(folder, "vae", "config.json"))
    text = text_config_from_diffusers(_read_json(os.path.join(folder, "text_encoder", "config.json")),
                                      os.path.join(folder, "text_encoder", "config.json"))
    scheduler_path = os.path.join(folder, "scheduler", "scheduler_config.json")
    source = "given"
    if prediction_type is None and os.path.exists(scheduler_path):
        prediction_type, source = _read_json(scheduler_path).get("prediction_type", "epsilon"), "scheduler config"
    source = source if prediction_type else "default"
    prediction_type = _check_prediction_type(prediction_type or "epsilon", scheduler_path)
    sample_size = unet_json.get("sample_size", 64)
    sample_size = tuple(sample_size) if isinstance(sample_size, (list, tuple)) else (sample_size, sample_size)
    image_size = tuple(int(s) * vae.downsample_factor for s in sample_size)
    config = _model_config(os.path.basename(os.path.normpath(folder)), text, unet, vae, image_size,
                           prediction_type, _pad_token_id(folder, text), folder)
    readers = []
    try:
        for part in ("unet", "vae", "text_encoder"):
            readers.append(_diffusers_reader(folder, part))
        unet_reader, vae_reader, text_reader = readers
        vae_source = ComponentSource(vae_reader, aliases=key_maps.DIFFUSERS_VAE_ALIASES)
        layout = key_maps.DIFFUSERS
        plans = {
            "text_encoder": ComponentPlan("text_encoder", key_maps.TEXT_ENCODER_HF, text, layout,
                                          # transformers >= 5 saves CLIPTextModel without "text_model."
                                          ComponentSource(text_reader, add_prefix="text_model."),
                                          unused=(r"position_ids$", r"text_projection\.weight$")),
            "diffusion_model": ComponentPlan("diffusion_model", key_maps.UNET, unet, layout,
                                             ComponentSource(unet_reader)),
            "decoder": ComponentPlan("decoder", key_maps.DECODER, vae, layout, vae_source,
                                     unused=(r"^encoder\.", r"^quant_conv\.")),
            "image_encoder": ComponentPlan("image_encoder", key_maps.IMAGE_ENCODER, vae, layout, vae_source,
                                           unused=(r"^decoder\.", r"^post_quant_conv\.")),
        }
    except BaseException:
        for reader in readers:
            reader.close()
        raise
    return Checkpoint(folder, config, plans, readers, [(logging.INFO, f"prediction type {prediction_type} ({source})")])


# ------------------------------------------------------------------------------------------ single files
def _check_prediction_type(prediction_type, where):
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"{where}: prediction_type {prediction_type!r} is not supported (one of "
                         f"{', '.join(PREDICTION_TYPES)})")
    return prediction_type


def _model_config(name, text, unet, vae, image_size, prediction_type, pad_token_id, where):
    try:
        return ModelConfig(name=name, text_encoder=text, unet=unet, vae=vae, image_size=image_size,
                           prediction_type=prediction_type, pad_token_id=pad_token_id)
    except ValueError as error:
        raise ValueError(f"{where}: inconsistent architecture ({error})") from None


def _indices(keys, pattern):
    """Sorted distinct integers captured by ``pattern`` (a regex with one group) in ``keys``."""
    found = set()
    regex = re.compile(pattern)
    for key in keys:
        match = regex.match(key)
        if match:
            found.add(int(match.group(1)))
    return sorted(found)


def _need(source, name, what):
    if name not in source:
        raise ValueError(f"{source.reader.path}: cannot infer the {what}: {source.file_key(name)} is missing")
    return source.shape(name)


def infer_unet_config(source, open_clip):
    """``UNetConfig`` from the tensor shapes of an original-layout UNet (``model.diffusion_model.*``)."""
    path = source.reader.path
    keys = source.keys()
    if any(key.startswith("label_emb.") for key in keys):
        raise ValueError(f"{path}: a class-conditioned UNet (label_emb: SDXL or unCLIP) is not supported")
    conv_in = _need(source, "input_blocks.0.0.weight", "UNet input channels")
    time_embed = _need(source, "time_embed.0.weight", "UNet time embedding")
    conv_out = _need(source, "out.2.weight", "UNet output channels")
    blocks = _indices(keys, r"input_blocks\.(\d+)\.")
    channels, attention, per_level, count = [], [], [], 0
    level_attention = set()
    for n in blocks[1:]:
        if f"input_blocks.{n}.0.op.weight" in source:
            per_level.append(count)
            attention.append(level_attention)
            count, level_attention = 0, set()
            continue
        res_out = _need(source, f"input_blocks.{n}.0.out_layers.3.weight", f"channels of input block {n}")
        if count == 0:
            channels.append(res_out[0])
        count += 1
        level_attention.add(f"input_blocks.{n}.1.proj_in.weight" in source)
    per_level.append(count)
    attention.append(level_attention)
    if len(set(per_level)) != 1 or any(len(a) != 1 for a in attention) or not channels:
        raise ValueError(f"{path}: the UNet's input blocks ({per_level} ResBlocks per level) do not form the SD "
                         "layout sd_keras supports")
    mid = "middle_block.1."
    context_dim = _need(source, mid + "transformer_blocks.0.attn2.to_k.weight", "context width")[1]
    proj_in = _need(source, mid + "proj_in.weight", "projection kind")
    ff_out = _need(source, mid + "transformer_blocks.0.ff.net.2.weight", "feed-forward width")
    heads = {"num_heads": None, "head_size": 64} if open_clip else {"num_heads": 8, "head_size": None}
    try:
        return UNetConfig(in_channels=conv_in[1], out_channels=conv_out[0], block_out_channels=tuple(channels),
                          layers_per_block=per_level[0], attention_levels=tuple(a.pop() for a in attention),
                          **heads, context_dim=context_dim, linear_proj=len(proj_in) == 2,
                          timestep_dim=time_embed[1], time_embed_dim=time_embed[0], ff_mult=ff_out[1] // ff_out[0],
                          gelu_approximate=False, norm_groups=32, norm_eps=1e-5, transformer_norm_eps=1e-6)
    except ValueError as error:
        raise ValueError(f"{path}: unsupported UNet shapes ({error})") from None


def infer_vae_config(source):
    """``VAEConfig`` from the tensor shapes of an original-layout VAE (``first_stage_model.*``)."""
    keys = source.keys()
    conv_in = _need(source, "encoder.conv_in.weight", "VAE image channels")
    levels = _indices(keys, r"encoder\.down\.(\d+)\.")
    if not levels:
        raise ValueError(f"{source.reader.path}: cannot infer the VAE levels (no encoder.down.* tensors)")
    per_level = _indices(keys, r"encoder\.down\.0\.block\.(\d+)\.")
    channels = tuple(_need(source, f"encoder.down.{level}.block.0.conv1.weight", "VAE channels")[0]
                     for level in levels)
    quant = _need(source, "quant_conv.weight", "latent channels")
    try:
        return VAEConfig(block_out_channels=channels, layers_per_block=len(per_level), image_channels=conv_in[1],
                         latent_channels=quant[0] // 2, scaling_factor=0.18215, norm_groups=32, norm_eps=1e-6)
    except ValueError as error:
        raise ValueError(f"{source.reader.path}: unsupported VAE shapes ({error})") from None


def _text_heads(width, path):
    if width % 64:
        raise ValueError(f"{path}: cannot infer the attention heads of a {width}-wide text encoder (CLIP and "
                         "OpenCLIP use 64-wide heads); load it from a diffusers folder whose config says")
    return width // 64


def open_clip_layers(source):
    """``(layers in the file, layers SD 2 uses)`` of an OpenCLIP text encoder (``cond_stage_model.model.*``).

    SD 2 conditions on the penultimate layer. Stability's files hold the whole OpenCLIP text tower, projection
    included: its last layer is never used. diffusers' conversion script writes only the layers of diffusers'
    text encoder (the ones SD 2 uses) and no ``text_projection``. A file without ``text_projection`` but with the
    24 layers of OpenCLIP ViT-H/14 is the whole tower too (the projection pruned).
    """
    path = source.reader.path
    layers = _indices(source.keys(), r"transformer\.resblocks\.(\d+)\.")
    if layers != list(range(len(layers))):
        raise ValueError(f"{path}: the OpenCLIP layers are not numbered 0..n-1 ({layers[:3]}...{layers[-3:]})")
    width = _need(source, "token_embedding.weight", "vocabulary")[1]
    whole_tower = "text_projection" in source or (width == SD2_CONTEXT_WIDTH and len(layers) == 24)
    used = len(layers) - 1 if whole_tower else len(layers)
    if used < 1:
        raise ValueError(f"{path}: an OpenCLIP text encoder with {len(layers)} layer(s) and text_projection has "
                         "no layer SD 2 uses (it conditions on the penultimate)")
    return len(layers), used


def infer_text_config(source, open_clip):
    """``TextEncoderConfig`` from the tensor shapes of an SD 1 (HF CLIP) or SD 2 (OpenCLIP) text encoder."""
    path = source.reader.path
    if open_clip:
        vocab, width = _need(source, "token_embedding.weight", "vocabulary")
        max_length = _need(source, "positional_embedding", "context length")[0]
        intermediate = _need(source, "transformer.resblocks.0.mlp.c_fc.weight", "MLP width")[0]
        num_layers, activation = open_clip_layers(source)[1], "gelu"
    else:
        vocab, width = _need(source, "text_model.embeddings.token_embedding.weight", "vocabulary")
        max_length = _need(source, "text_model.embeddings.position_embedding.weight", "context length")[0]
        num_layers = len(_indices(source.keys(), r"text_model\.encoder\.layers\.(\d+)\."))
        intermediate = _need(source, "text_model.encoder.layers.0.mlp.fc1.weight", "MLP width")[0]
        activation = "quick_gelu"
    return TextEncoderConfig(vocab_size=vocab, max_length=max_length, width=width, num_layers=num_layers,
                             num_heads=_text_heads(width, path), intermediate_size=intermediate,
                             activation=activation, layer_norm_eps=1e-5)


_UNET_WORDS = ("time_embed", "input_blocks", "middle_block", "output_blocks", "out", "label_emb", "in_layers",
               "emb_layers", "out_layers", "skip_connection", "op", "conv", "norm", "norm1", "norm2", "norm3",
               "proj_in", "proj_out", "transformer_blocks", "attn1", "attn2", "to_q", "to_k", "to_v", "to_out",
               "ff", "net", "proj", "weight", "bias")
_UNET_TOKEN = re.compile("|".join(sorted(_UNET_WORDS, key=len, reverse=True)) + r"|\d+")
_UNET_NAME = re.compile(f"(?:{_UNET_TOKEN.pattern})+")


def dotted_unet_name(flat):
    """The original UNet parameter name of an EMA buffer name (its dots removed), or None if it is not one.

    ``input_blocks110in_layers0weight`` -> ``input_blocks.11.0.in_layers.0.weight``: the name is split into the
    words of the original UNet's modules and numbers; the digits after ``input_blocks`` / ``output_blocks`` are
    the block index followed by the one-digit position inside the block.
    """
    if not _UNET_NAME.fullmatch(flat):
        return None
    tokens = _UNET_TOKEN.findall(flat)
    parts = []
    for i, token in enumerate(tokens):
        if token.isdigit() and i and tokens[i - 1] in ("input_blocks", "output_blocks"):
            if len(token) < 2:
                return None
            parts += [str(int(token[:-1])), token[-1]]
        else:
            parts.append(token)
    return ".".join(parts)


def _prediction_type_note(prediction_type, unet, reader):
    """``(prediction type, (level, note))``: the given one, or inferred as diffusers' single-file loader does."""
    if prediction_type is not None:
        return prediction_type, (logging.INFO, f"prediction type {prediction_type} (given)")
    if unet.context_dim != SD2_CONTEXT_WIDTH:
        return "epsilon", (logging.INFO, f"prediction type epsilon (inferred: a {unet.context_dim}-wide context is "
                                         "not SD 2.x; pass --prediction-type / prediction_type= to override)")
    step = getattr(reader, "global_step", None)
    if step == SD2_BASE_GLOBAL_STEP:
        return "epsilon", (logging.INFO, f"prediction type epsilon (inferred: SD 2.x with global_step {step}, the "
                                         "512 base model; pass --prediction-type / prediction_type= to override)")
    return "v_prediction", (logging.WARNING,
                            "prediction type v_prediction (inferred: SD 2.x, 1024-wide context, no global_step "
                            f"{SD2_BASE_GLOBAL_STEP}: a 768-v model); for an SD 2.x 512 base model pass "
                            "--prediction-type epsilon / prediction_type='epsilon'")


def _unet_source(reader, keys, ema):
    """``(source, note)`` of the UNet: ``model.diffusion_model.*`` or its EMA copy (``model_ema.*``)."""
    path = reader.path
    plain_prefix = key_maps.ORIGINAL_PREFIXES["diffusion_model"]
    ema_prefix = EMA_PREFIX + plain_prefix[len("model."):].replace(".", "")  # model_ema.diffusion_model
    plain = any(key.startswith(plain_prefix) for key in keys)
    averaged = any(key.startswith(ema_prefix) for key in keys)
    if ema and not averaged:
        raise ValueError(f"{path}: no EMA weights (model_ema.diffusion_model*) to load with ema=True / --ema; the "
                         f"file holds {'only non-EMA UNet weights (model.diffusion_model.*)' if plain else 'no UNet'}")
    if ema or not plain:
        note = ("UNet weights: EMA (model_ema.*, chosen with ema=True / --ema)" if plain
                else "UNet weights: EMA (model_ema.*), the only UNet weights in the file")
        return ComponentSource(reader, ema_prefix, undotted=True), (logging.INFO, note)
    if averaged:
        return ComponentSource(reader, plain_prefix), (
            logging.WARNING, "UNet weights: non-EMA (model.diffusion_model.*); the file also holds EMA weights "
                             "(model_ema.*): pass ema=True / --ema to load those")
    return ComponentSource(reader, plain_prefix), None


def _open_single_file(path, prediction_type, ema=False):
    reader = open_tensor_file(path)
    try:
        keys = reader.keys()
        if not keys:
            raise CheckpointFormatError(f"{path}: no tensors in the file")
        if any(key.startswith("conditioner.embedders.") for key in keys):
            raise ValueError(f"{path}: an SDXL checkpoint (conditioner.embedders.*) is not supported; sd_keras "
                             "loads SD 1.x / 2.x")
        prefixes = key_maps.ORIGINAL_PREFIXES
        open_clip = any(key.startswith(prefixes["text_encoder_open_clip"]) for key in keys)
        text_prefix = prefixes["text_encoder_open_clip" if open_clip else "text_encoder_hf"]
        present = {name: any(key.startswith(prefixes[name]) for key in keys)
                   for name in ("diffusion_model", "vae")}
        present["diffusion_model"] |= any(key.startswith(EMA_PREFIX + "diffusion_model") for key in keys)
        present["text_encoder"] = any(key.startswith(text_prefix) for key in keys)
        if not any(present.values()):
            raise ValueError(f"{path}: unknown key layout: no model.diffusion_model.*, model_ema.*, "
                             f"first_stage_model.* or cond_stage_model.* tensors (e.g. {sorted(keys)[:3]}); not an "
                             "SD 1.x / 2.x original-layout checkpoint")
        expected = {"diffusion_model": "UNet (model.diffusion_model.* or its EMA copy model_ema.*)",
                    "vae": "VAE (first_stage_model.*)", "text_encoder": "text encoder (cond_stage_model.*)"}
        missing = [expected[name] for name, found in present.items() if not found]
        if missing:
            raise ValueError(f"{path}: the checkpoint has no {' and no '.join(missing)}; sd_keras needs all three")
        notes = []
        unet_source, unet_note = _unet_source(reader, keys, ema)
        if unet_note:
            notes.append(unet_note)
        vae_source = ComponentSource(reader, prefixes["vae"])
        # very old transformers saved CLIPTextModel without the "text_model." level
        text_source = (ComponentSource(reader, text_prefix) if open_clip
                       else ComponentSource(reader, text_prefix, add_prefix="text_model."))
        text = infer_text_config(text_source, open_clip)
        unet = infer_unet_config(unet_source, open_clip)
        vae = infer_vae_config(vae_source)
        prediction_type, note = _prediction_type_note(prediction_type, unet, reader)
        notes.insert(0, note)
        prediction_type = _check_prediction_type(prediction_type, path)
        size = 768 if open_clip and prediction_type == "v_prediction" else 512
        stem = os.path.splitext(os.path.basename(path))[0]
        config = _model_config(stem, text, unet, vae, (size, size), prediction_type,
                               OPEN_CLIP_PAD_ID if open_clip else OPENAI_CLIP_PAD_ID, path)
        layout = key_maps.ORIGINAL
        if open_clip:
            in_file, used = open_clip_layers(text_source)
            notes.append((logging.INFO, f"text encoder: OpenCLIP, {used} of the file's {in_file} layers" + (
                " (the whole text tower: SD 2 conditions on the penultimate layer)" if used < in_file
                else " (no text_projection: converted from a diffusers text encoder)")))
            text_plan = ComponentPlan("text_encoder", key_maps.TEXT_ENCODER_OPEN_CLIP, text, layout, text_source,
                                      # the unused final layer of the whole tower, if the file has it
                                      unused=(rf"^transformer\.resblocks\.{used}\.", r"^text_projection$",
                                              r"^logit_scale$", r"^attn_mask$", r"position_ids$"))
        else:
            text_plan = ComponentPlan("text_encoder", key_maps.TEXT_ENCODER_HF, text, layout, text_source,
                                      unused=(r"position_ids$",))
        plans = {
            "text_encoder": text_plan,
            "diffusion_model": ComponentPlan("diffusion_model", key_maps.UNET, unet, layout, unet_source),
            "decoder": ComponentPlan("decoder", key_maps.DECODER, vae, layout, vae_source,
                                     unused=(r"^encoder\.", r"^quant_conv\.", r"^loss\.")),
            "image_encoder": ComponentPlan("image_encoder", key_maps.IMAGE_ENCODER, vae, layout, vae_source,
                                           unused=(r"^decoder\.", r"^post_quant_conv\.", r"^loss\.")),
        }
    except BaseException:
        reader.close()
        raise
    return Checkpoint(path, config, plans, [reader], notes)


# ----------------------------------------------------------------------------------------------- entries
def open_checkpoint(path, *, prediction_type=None, ema=False):
    """Open a diffusers folder or an original single file; returns a ``Checkpoint`` (config + plans), with every
    key checked against the inferred architecture. Nothing is read beyond headers and the pickle index. What was
    inferred or chosen is logged (``sd_keras.checkpoints`` logger) and kept in ``checkpoint.notes``.

    ``prediction_type``: ``"epsilon"`` or ``"v_prediction"``; overrides the folder's scheduler config or, for a
    single file, the inferred one (``v_prediction`` for SD 2.x files, 1024-wide context, unless their
    ``global_step`` is 875000; else ``epsilon``). ``ema``: load a single file's EMA UNet weights (``model_ema.*``)
    where it also holds the non-EMA ones.
    """
    path = os.fspath(path)
    if prediction_type is not None:
        _check_prediction_type(prediction_type, "prediction_type argument")
    if os.path.isdir(path):
        if ema:
            raise ValueError(f"{path}: ema=True / --ema: a diffusers folder holds one set of UNet weights; only "
                             "original single files carry an EMA copy (model_ema.*)")
        checkpoint = _open_diffusers(path, prediction_type)
    elif os.path.exists(path):
        checkpoint = _open_single_file(path, prediction_type, ema)
    else:
        raise FileNotFoundError(f"{path}: no such checkpoint file or folder")
    try:
        checkpoint.check()
    except BaseException:
        checkpoint.close()
        raise
    for level, note in checkpoint.notes:
        LOG.log(level, "%s: %s", path, note)
    return checkpoint


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
            files.write_json(os.path.join(staging, "config.json"),
                             {"format": saved.FORMAT, "format_version": saved.FORMAT_VERSION,
                              "config": config.to_dict()})
    return output


def check_output_folder(output):
    """Refuse to replace anything but an empty folder or an earlier sd_keras saved model."""
    from sd_keras.weights import saved

    if not os.path.exists(output):
        return
    if os.path.isdir(output) and (not os.listdir(output) or saved.is_saved_folder(output)):
        return
    raise ValueError(f"{output}: exists and is not an sd_keras saved model; refusing to replace it (choose "
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
