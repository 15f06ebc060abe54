"""Plans: how the tensors of a checkpoint fill sd_keras's models (shared by the diffusers and single-file loaders).

A ``ComponentSource`` is one component's tensors inside a reader (a key prefix, renames); a ``ComponentPlan`` pairs
it with a key-map table (``sd_keras.weights.key_maps``) and checks every key and shape before it fills a model; a
``Checkpoint`` is an opened checkpoint: its config, one plan per component, and the open readers.
"""

import logging
import re

import numpy as np

from sd_keras.config import PREDICTION_TYPES, ModelConfig
from sd_keras.errors import InputError
from sd_keras.weights import key_maps

LOG = logging.getLogger("sd_keras.checkpoints")
COMPONENTS = ("text_encoder", "diffusion_model", "decoder", "image_encoder")
OPENAI_CLIP_PAD_ID = 49407  # <|endoftext|>
OPEN_CLIP_PAD_ID = 0  # "!": the SD 2 / OpenCLIP tokenizer pads with 0


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
            raise InputError(f"{where}: {self.name} is missing {len(missing)} tensor(s), e.g. "
                             f"{[self.source.file_key(m) for m in missing[:3]]}; the file does not match the "
                             "inferred architecture (an unsupported model or an incomplete file)")
        if unexpected:
            raise InputError(f"{where}: {self.name} has {len(unexpected)} tensor(s) sd_keras does not know, e.g. "
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
                raise InputError(f"{where}: {self.source.full_key(entry.source)} has no place in sd_keras's "
                                 f"{model.name} ({entry.keras})")
            if entry.source not in self.source:
                raise InputError(f"{where}: {model.name} needs {self.source.file_key(entry.source)}, which the "
                                 "checkpoint does not have")
            target = tuple(variables[entry.keras].shape)
            try:
                shape = key_maps.transformed_shape(entry.transform, self.source.shape(entry.source), target)
            except ValueError as error:
                shape = f"unusable ({error})"
            if shape != target:
                raise InputError(f"{where}: {self.source.full_key(entry.source)} has shape "
                                 f"{self.source.shape(entry.source)}, which gives {shape} where {model.name}'s "
                                 f"{entry.keras} is {target}")
            plan.append((entry, variables.pop(entry.keras)))
        if variables:
            raise InputError(f"{where}: nothing in the checkpoint fills {model.name}'s {sorted(variables)[:3]}")
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

    def checked(self, where):
        """This checkpoint once ``check()`` passes (else it is closed and the error raised), its notes logged by the
        ``sd_keras.checkpoints`` logger under ``where``."""
        try:
            self.check()
        except BaseException:
            self.close()
            raise
        for level, note in self.notes:
            LOG.log(level, "%s: %s", where, note)
        return self

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


def check_prediction_type(prediction_type, where):
    if prediction_type not in PREDICTION_TYPES:
        raise InputError(f"{where}: prediction_type {prediction_type!r} is not supported (one of "
                         f"{', '.join(PREDICTION_TYPES)})")
    return prediction_type


def model_config(name, text, unet, vae, image_size, prediction_type, pad_token_id, where):
    try:
        return ModelConfig(name=name, text_encoder=text, unet=unet, vae=vae, image_size=image_size,
                           prediction_type=prediction_type, pad_token_id=pad_token_id)
    except ValueError as error:
        raise InputError(f"{where}: inconsistent architecture ({error})") from None


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
