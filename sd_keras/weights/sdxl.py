"""Load SDXL checkpoints (base, refiner, 9-channel inpainting): diffusers folders and original single files.

Inputs:

- a **diffusers folder** (``StableDiffusionXLPipeline`` / ``StableDiffusionXLImg2ImgPipeline`` /
  ``StableDiffusionXLInpaintPipeline``.save_pretrained): ``unet/``, ``vae/``, ``text_encoder/`` (CLIP ViT-L; absent
  in the refiner), ``text_encoder_2/`` (OpenCLIP ViT-bigG, ``CLIPTextModelWithProjection``), each with its
  ``config.json`` and ``.safetensors`` / ``.bin`` weights, sharded (``*.index.json``) or not, plain or the
  ``fp16`` variant (``diffusion_pytorch_model.fp16.safetensors``; the plain file wins where both exist);
  ``scheduler/scheduler_config.json`` gives ``prediction_type``, ``tokenizer*/special_tokens_map.json`` the pad
  tokens, ``model_index.json`` ``force_zeros_for_empty_prompt``;
- an **original single file** (``sd_xl_base_1.0.safetensors``, ``sd_xl_refiner_1.0.safetensors`` and the
  fine-tunes people share): ``model.diffusion_model.*`` (``label_emb.0.0`` / ``label_emb.0.2`` are the added
  embedding), ``first_stage_model.*``, ``conditioner.embedders.0.transformer.text_model.*`` (CLIP ViT-L, Hugging
  Face names) and ``conditioner.embedders.1.model.*`` (OpenCLIP bigG: fused ``attn.in_proj_weight``, bare
  ``text_projection``); the refiner's only encoder is ``conditioner.embedders.0.model.*``.

The architecture comes from the folder's ``config.json`` files, or from a single file's tensor shapes:
everything SD's inference gives (``sd_keras.weights.sd_single_file.infer_unet_config``) plus transformer blocks per
level (``transformer_blocks.{d}``), the text encoders' depths and the projection width; what shapes cannot tell
follows Stability's ``sgm`` configs: 64-wide attention heads everywhere, 6 time ids for the two-encoder base
model and 5 for the refiner, ``addition_time_embed_dim`` = (``label_emb`` input width - pooled width) / time ids,
``epsilon`` prediction unless ``prediction_type=`` says otherwise, 1024x1024.

Every tensor is accounted for: a missing one or one sd_keras does not know is an ``InputError`` naming it (the
unused last CLIP ViT-L layer and final LayerNorm, ``position_ids``, ``logit_scale`` are known and skipped).

Example:
    >>> config, weights = load_sdxl_checkpoint("sd_xl_base_1.0.safetensors")   # doctest: +SKIP
    >>> parts = sd_keras.models.build_all(config, weights)                    # doctest: +SKIP
"""

import dataclasses
import logging
import os
import re

from sd_keras.config_sdxl import (SDXLConfig, SDXLRefinerConfig, SDXLTextEncoderConfig, SDXLUNetConfig)
from sd_keras.errors import InputError
from sd_keras.models import registry
from sd_keras.weights import diffusers as sd_diffusers
from sd_keras.weights import key_maps, sdxl_key_maps
from sd_keras.weights import single_file as sd_single_file
from sd_keras.weights.diffusers import _diffusers_reader, _read_json, tokenizer_pad_id
from sd_keras.weights.plans import Checkpoint, ComponentPlan, ComponentSource, check_prediction_type
from sd_keras.weights.readers import open_tensor_file
from sd_keras.weights.single_file import _indices, _need, _text_heads, _text_shapes

LOG = logging.getLogger("sd_keras.checkpoints")
SDXL_IMAGE_SIZE = (1024, 1024)
OPEN_CLIP_PAD_ID = 0  # SDXL's second tokenizer pads with "!"
CLIP_PAD_ID = 49407
HEAD_WIDTH = 64  # sgm's num_head_channels for every SDXL UNet
BASE_TIME_IDS, REFINER_TIME_IDS = 6, 5
DIFFUSERS_WEIGHT_STEMS = {"unet": ("diffusion_pytorch_model",), "vae": ("diffusion_pytorch_model",),
                          "text_encoder": ("model", "pytorch_model"), "text_encoder_2": ("model", "pytorch_model")}
SINGLE_FILE_MARKER = "conditioner.embedders."

__all__ = ["is_sdxl_checkpoint", "open_sdxl_checkpoint", "load_sdxl_checkpoint", "SDXLCheckpoint"]


# ------------------------------------------------------------------------------------------------- helpers
def _as_input_error(call, *args, **kwargs):
    """Run a validator of the SD loader; its ValueErrors become InputErrors (same message)."""
    try:
        return call(*args, **kwargs)
    except InputError:
        raise
    except ValueError as error:
        raise InputError(str(error)) from None


def is_sdxl_checkpoint(path):
    """True for a diffusers SDXL folder (``text_encoder_2/`` or an ``XL`` pipeline class in
    ``model_index.json``), a single file with ``conditioner.embedders.*`` tensors or an sd_keras saved folder of
    an SDXL family; reads headers only."""
    path = os.fspath(path)
    from sd_keras.weights import saved

    if saved.is_saved_folder(path):  # sd_keras's own format: its family says
        return registry.family_of(saved.read_config(path)).name.startswith("sdxl")
    if os.path.isdir(path):
        index_path = os.path.join(path, "model_index.json")
        index = _read_json(index_path) if os.path.exists(index_path) else {}
        return (os.path.isdir(os.path.join(path, "text_encoder_2")) or "text_encoder_2" in index
                or "XL" in str(index.get("_class_name", "")))
    if not os.path.isfile(path):
        return False
    reader = open_tensor_file(path)
    try:
        return any(key.startswith(SINGLE_FILE_MARKER) for key in reader.keys())
    finally:
        reader.close()


class SDXLCheckpoint(Checkpoint):
    """An opened SDXL checkpoint: ``config`` (an ``SDXLConfig``), a plan per component, ``notes``."""

    @property
    def components(self):
        return [name for name in registry.components(self.config) if name in self.plans]

    def check(self):
        for plan in self.plans.values():
            _as_input_error(plan.check_keys)


# ------------------------------------------------------------------------------------------ configuration
def unet_config_from_diffusers(config, path, pooled_dim):
    """``SDXLUNetConfig`` of a diffusers SDXL ``UNet2DConditionModel`` config.json (``pooled_dim``: the second
    text encoder's projection width)."""
    if config.get("addition_embed_type") != "text_time":
        raise InputError(f"{path}: unet addition_embed_type={config.get('addition_embed_type')!r}; an SDXL UNet has "
                         "'text_time'")
    if config.get("reverse_transformer_layers_per_block") is not None:
        raise InputError(f"{path}: unet reverse_transformer_layers_per_block is not supported (the up path "
                         "mirrors the down path)")
    channels = config["block_out_channels"]
    depth = config.get("transformer_layers_per_block", 1)
    depth = list(depth) if isinstance(depth, (list, tuple)) else [depth] * len(channels)
    if len(depth) != len(channels) or any(isinstance(d, (list, tuple)) for d in depth):
        raise InputError(f"{path}: unet transformer_layers_per_block={config.get('transformer_layers_per_block')!r} "
                         "must be one number per level")
    time_dim = config.get("addition_time_embed_dim")
    input_dim = config.get("projection_class_embeddings_input_dim")
    if not time_dim or not input_dim:
        raise InputError(f"{path}: unet needs addition_time_embed_dim and projection_class_embeddings_input_dim")
    num_time_ids, remainder = divmod(input_dim - pooled_dim, time_dim)
    if remainder or num_time_ids < 1:
        raise InputError(f"{path}: unet projection_class_embeddings_input_dim {input_dim} is not the pooled width "
                         f"{pooled_dim} plus a whole number of {time_dim}-wide time ids")
    plain = {key: value for key, value in config.items()
             if key not in ("addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
                            "transformer_layers_per_block", "addition_embed_type_num_heads")}
    base = _as_input_error(sd_diffusers.unet_config_from_diffusers, plain, path)
    return _as_input_error(SDXLUNetConfig, **dataclasses.asdict(base), transformer_depth=tuple(depth),
                           addition_time_embed_dim=time_dim, num_time_ids=num_time_ids, pooled_dim=pooled_dim)


def text_config_from_diffusers(config, path, *, projection):
    """``SDXLTextEncoderConfig`` of a transformers ``CLIPTextModel`` / ``CLIPTextModelWithProjection``
    config.json (``projection``: the one whose pooled, projected output SDXL uses)."""
    base = _as_input_error(sd_diffusers.text_config_from_diffusers, config, path)
    projection_dim = None
    if projection:
        projection_dim = config.get("projection_dim")
        if not projection_dim:
            raise InputError(f"{path}: text_encoder_2 needs projection_dim (a CLIPTextModelWithProjection)")
    return _as_input_error(SDXLTextEncoderConfig, **dataclasses.asdict(base), projection_dim=projection_dim)


def _sdxl_config(name, text, text_2, unet, vae, image_size, prediction_type, pad_ids, force_zeros, where):
    cls = SDXLRefinerConfig if text is None else SDXLConfig
    try:
        return cls(name=name, text_encoder=text, text_encoder_2=text_2, unet=unet, vae=vae, image_size=image_size,
                   prediction_type=prediction_type, pad_token_ids=pad_ids, force_zeros_for_empty_prompt=force_zeros,
                   family=cls.FAMILY)
    except ValueError as error:
        raise InputError(f"{where}: inconsistent architecture ({error})") from None


# --------------------------------------------------------------------------------------------- diffusers
def _text_plans(text_reader, text_config, layout, *, prefix="", hf_names=True):
    """The plan of one SDXL text encoder and the regexes of its known, unused tensors."""
    unused = [r"position_ids$", r"^logit_scale$", r"^attn_mask$"]
    if not text_config.projection_dim:  # penultimate only: the last layer and the final LayerNorm are not built
        last = text_config.num_layers - 1
        unused += [rf"^text_model\.encoder\.layers\.{last}\.", r"^text_model\.final_layer_norm\.",
                   r"^text_projection\.weight$"]
    if hf_names:  # transformers >= 5 saves CLIPTextModel without "text_model."
        source = ComponentSource(text_reader, prefix, add_prefix="text_model.",
                                 aliases=(("text_model.text_projection.", "text_projection."),))
    else:
        source = ComponentSource(text_reader, prefix)
    return source, tuple(unused)


def _open_diffusers(folder, prediction_type):
    index_path = os.path.join(folder, "model_index.json")
    index = _read_json(index_path) if os.path.exists(index_path) else {}
    refiner = not os.path.exists(os.path.join(folder, "text_encoder", "config.json"))
    parts = ("unet", "vae", "text_encoder_2") if refiner else ("unet", "vae", "text_encoder", "text_encoder_2")
    for part in parts:
        if not os.path.exists(os.path.join(folder, part, "config.json")):
            raise InputError(f"{folder}: not a diffusers SDXL folder ({part}/config.json is missing)")

    def config_of(part):
        return _read_json(os.path.join(folder, part, "config.json")), os.path.join(folder, part, "config.json")

    text_2 = text_config_from_diffusers(*config_of("text_encoder_2"), projection=True)
    text = None if refiner else text_config_from_diffusers(*config_of("text_encoder"), projection=False)
    unet_json, unet_path = config_of("unet")
    unet = unet_config_from_diffusers(unet_json, unet_path, text_2.projection_dim)
    vae = _as_input_error(sd_diffusers.vae_config_from_diffusers, *config_of("vae"))
    prediction_type, source = sd_diffusers._prediction_type(folder, prediction_type)
    image_size = sd_diffusers._image_size(unet_json, vae, 128)
    pads = (tokenizer_pad_id(folder, "tokenizer_2", OPEN_CLIP_PAD_ID),)
    if not refiner:
        pads = (tokenizer_pad_id(folder, "tokenizer", CLIP_PAD_ID),) + pads
    force_zeros = bool(index.get("force_zeros_for_empty_prompt", not refiner))
    config = _sdxl_config(os.path.basename(os.path.normpath(folder)), text, text_2, unet, vae, image_size,
                          prediction_type, pads, force_zeros, folder)
    readers = {}
    try:
        for part in parts:
            readers[part] = _diffusers_reader(folder, part, DIFFUSERS_WEIGHT_STEMS[part])
        layout = key_maps.DIFFUSERS
        vae_source = ComponentSource(readers["vae"], aliases=key_maps.DIFFUSERS_VAE_ALIASES)
        plans = {}
        for part, part_config in (("text_encoder", text), ("text_encoder_2", text_2)):
            if part_config is None:
                continue
            source, unused = _text_plans(readers[part], part_config, layout)
            plans[part] = ComponentPlan(part, sdxl_key_maps.text_table(part_config, layout), part_config, layout,
                                        source, unused=unused)
        plans["diffusion_model"] = ComponentPlan("diffusion_model", sdxl_key_maps.UNET, unet, layout,
                                                 ComponentSource(readers["unet"]))
        plans["decoder"] = ComponentPlan("decoder", key_maps.DECODER, vae, layout, vae_source,
                                         unused=(r"^encoder\.", r"^quant_conv\."))
        plans["image_encoder"] = ComponentPlan("image_encoder", key_maps.IMAGE_ENCODER, vae, layout, vae_source,
                                               unused=(r"^decoder\.", r"^post_quant_conv\."))
    except BaseException:
        for reader in readers.values():
            reader.close()
        raise
    notes = [(logging.INFO, f"SDXL {'refiner' if refiner else 'base'} (diffusers folder), prediction type "
                            f"{prediction_type} ({source})")]
    return SDXLCheckpoint(folder, config, plans, list(readers.values()), notes)


# ------------------------------------------------------------------------------------------ single files
class _Hiding:
    """A ``ComponentSource`` seen without the names matching ``pattern`` (for the SD shape inference)."""

    def __init__(self, source, pattern):
        self._source, self._pattern = source, re.compile(pattern)
        self.reader = source.reader

    def keys(self):
        return [key for key in self._source.keys() if not self._pattern.match(key)]

    def __contains__(self, name):
        return name in self._source and not self._pattern.match(name)

    def shape(self, name):
        return self._source.shape(name)

    def file_key(self, name):
        return self._source.file_key(name)


def infer_unet_config(source, pooled_dim, num_time_ids):
    """``SDXLUNetConfig`` from the tensor shapes of an original-layout SDXL UNet (``model.diffusion_model.*``)."""
    path = source.reader.path
    label = _need(source, "label_emb.0.0.weight", "added conditioning width")
    base = _as_input_error(sd_single_file.infer_unet_config, _Hiding(source, r"label_emb\."), True)
    keys = source.keys()
    levels = len(base.block_out_channels)
    depth = []
    for level in range(levels):  # the first ResBlock slot of each level: input_blocks.{n}
        n = 1 + level * (base.layers_per_block + 1)
        found = _indices(keys, rf"input_blocks\.{n}\.1\.transformer_blocks\.(\d+)\.")
        depth.append(len(found) if found else 1)
    mid = _indices(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\.")
    if len(mid) != depth[-1]:
        if base.attention_levels[-1]:
            raise InputError(f"{path}: the middle block has {len(mid)} transformer blocks and the last level "
                             f"{depth[-1]}; sd_keras (like diffusers) gives them the same depth")
        depth[-1] = len(mid)
    time_dim, remainder = divmod(label[1] - pooled_dim, num_time_ids)
    if remainder or time_dim < 2:
        raise InputError(f"{path}: label_emb.0.0.weight {label} does not fit a {pooled_dim}-wide pooled embedding "
                         f"and {num_time_ids} time ids")
    fields = dataclasses.asdict(base)
    fields.update(num_heads=None, head_size=HEAD_WIDTH, transformer_depth=tuple(depth), addition_time_embed_dim=time_dim,
                  num_time_ids=num_time_ids, pooled_dim=pooled_dim)
    try:
        return SDXLUNetConfig(**fields)
    except ValueError as error:
        raise InputError(f"{path}: unsupported SDXL UNet shapes ({error})") from None


def infer_text_config(source, open_clip):
    """``SDXLTextEncoderConfig`` from the shapes of CLIP ViT-L (Hugging Face names) or OpenCLIP bigG."""
    path = source.reader.path
    vocab, width, max_length, intermediate = _text_shapes(source, open_clip)
    if open_clip:
        layers = _indices(source.keys(), r"transformer\.resblocks\.(\d+)\.")
        projection = _need(source, "text_projection", "pooled width")
        if projection[0] != width:
            raise InputError(f"{path}: text_projection {projection} does not start from the {width}-wide hidden "
                             "states")
        extra = {"activation": "gelu", "projection_dim": projection[1]}
    else:
        layers = _indices(source.keys(), r"text_model\.encoder\.layers\.(\d+)\.")
        extra = {"activation": "quick_gelu", "projection_dim": None}
    if layers != list(range(len(layers))):
        raise InputError(f"{path}: the text encoder's layers are not numbered 0..n-1 ({layers[:3]}...)")
    try:
        return SDXLTextEncoderConfig(vocab_size=vocab, max_length=max_length, width=width, num_layers=len(layers),
                                     num_heads=_text_heads(width, path), intermediate_size=intermediate,
                                     layer_norm_eps=1e-5, **extra)
    except ValueError as error:
        raise InputError(f"{path}: unsupported text encoder shapes ({error})") from None


def _open_single_file(path, prediction_type):
    reader = open_tensor_file(path)
    try:
        keys = reader.keys()
        prefixes = sdxl_key_maps.ORIGINAL_PREFIXES
        refiner = any(key.startswith(prefixes["refiner_text_encoder_2"]) for key in keys)
        if refiner:
            text_prefixes = {"text_encoder_2": prefixes["refiner_text_encoder_2"]}
        else:
            text_prefixes = {"text_encoder": prefixes["text_encoder"], "text_encoder_2": prefixes["text_encoder_2"]}
        expected = {prefixes["diffusion_model"]: "UNet (model.diffusion_model.*)",
                    prefixes["vae"]: "VAE (first_stage_model.*)",
                    **{prefix: f"{name} ({prefix}*)" for name, prefix in text_prefixes.items()}}
        missing = [what for prefix, what in expected.items() if not any(key.startswith(prefix) for key in keys)]
        if missing:
            raise InputError(f"{path}: an SDXL checkpoint (conditioner.embedders.*) without {' and '.join(missing)}")
        known = tuple(prefixes[name] for name in ("diffusion_model", "vae")) + tuple(text_prefixes.values())
        stray = [key for key in keys if not key.startswith(known)]
        if stray:
            raise InputError(f"{path}: {len(stray)} tensor(s) belong to no SDXL component sd_keras knows, e.g. "
                             f"{sorted(stray)[:3]} (another conditioner or an unsupported architecture)")
        sources = {"text_encoder_2": ComponentSource(reader, text_prefixes["text_encoder_2"])}
        if not refiner:
            sources["text_encoder"] = ComponentSource(reader, text_prefixes["text_encoder"],
                                                      add_prefix="text_model.")
        text_2 = infer_text_config(sources["text_encoder_2"], True)
        text = None if refiner else infer_text_config(sources["text_encoder"], False)
        unet_source = ComponentSource(reader, prefixes["diffusion_model"])
        unet = infer_unet_config(unet_source, text_2.projection_dim, REFINER_TIME_IDS if refiner else BASE_TIME_IDS)
        vae_source = ComponentSource(reader, prefixes["vae"])
        vae = dataclasses.replace(_as_input_error(sd_single_file.infer_vae_config, vae_source), scaling_factor=0.13025)
        given = prediction_type is not None
        prediction_type = check_prediction_type(prediction_type or "epsilon", "prediction_type argument")
        stem = os.path.splitext(os.path.basename(path))[0]
        config = _sdxl_config(stem, text, text_2, unet, vae, SDXL_IMAGE_SIZE, prediction_type,
                              (OPEN_CLIP_PAD_ID,) if refiner else (CLIP_PAD_ID, OPEN_CLIP_PAD_ID), not refiner, path)
        layout = key_maps.ORIGINAL
        plans = {}
        for part, part_config in (("text_encoder", text), ("text_encoder_2", text_2)):
            if part_config is None:
                continue
            _, unused = _text_plans(reader, part_config, layout)
            plans[part] = ComponentPlan(part, sdxl_key_maps.text_table(part_config, layout), part_config, layout,
                                        sources[part], unused=unused)
        plans["diffusion_model"] = ComponentPlan("diffusion_model", sdxl_key_maps.UNET, unet, layout, unet_source)
        plans["decoder"] = ComponentPlan("decoder", key_maps.DECODER, vae, layout, vae_source,
                                         unused=(r"^encoder\.", r"^quant_conv\.", r"^loss\."))
        plans["image_encoder"] = ComponentPlan("image_encoder", key_maps.IMAGE_ENCODER, vae, layout, vae_source,
                                               unused=(r"^decoder\.", r"^post_quant_conv\.", r"^loss\."))
    except BaseException:
        reader.close()
        raise
    notes = [(logging.INFO, f"SDXL {'refiner' if refiner else 'base'} (single file), prediction type "
                            f"{prediction_type} ({'given' if given else 'SDXL default'})")]
    return SDXLCheckpoint(path, config, plans, [reader], notes)


# ------------------------------------------------------------------------------------------------ entries
def open_sdxl_checkpoint(path, *, prediction_type=None):
    """Open an SDXL diffusers folder or single file: an ``SDXLCheckpoint`` with every key checked (nothing is read
    beyond headers). ``prediction_type``: overrides the scheduler config / the ``epsilon`` default."""
    path = os.fspath(path)
    if prediction_type is not None:
        check_prediction_type(prediction_type, "prediction_type argument")
    if os.path.isdir(path):
        checkpoint = _open_diffusers(path, prediction_type)
    elif os.path.isfile(path):
        checkpoint = _open_single_file(path, prediction_type)
    else:
        raise InputError(f"{path}: no such checkpoint file or folder")
    return checkpoint.checked(path)


def open_vae(path, vae_config):
    """Plans for ``decoder`` and ``image_encoder`` from a separate VAE (e.g. madebyollin's ``sdxl-vae-fp16-fix``,
    which decodes in float16 without overflowing): a diffusers ``AutoencoderKL`` folder (``config.json`` and
    weights), or one ``.safetensors`` in diffusers' names or the original ones (``decoder.up.*``, with or without
    ``first_stage_model.``). Its shapes must be ``vae_config``'s (the model's VAE). Returns ``(plans, readers,
    scaling factor or None)``."""
    path = os.fspath(path)
    scaling = None
    if os.path.isdir(path):
        config_path = os.path.join(path, "config.json")
        if not os.path.exists(config_path):
            raise InputError(f"{path}: not a diffusers VAE folder (config.json is missing)")
        vae_json = _read_json(config_path)
        folder_config = _as_input_error(sd_diffusers.vae_config_from_diffusers, vae_json, config_path)
        if folder_config.block_out_channels != vae_config.block_out_channels:
            raise InputError(f"{config_path}: a VAE with channels {folder_config.block_out_channels}; this model's "
                             f"has {vae_config.block_out_channels}")
        scaling = folder_config.scaling_factor
        reader = _diffusers_reader(path, "", DIFFUSERS_WEIGHT_STEMS["vae"])
    elif os.path.isfile(path):
        reader = open_tensor_file(path)
    else:
        raise InputError(f"{path}: no such VAE file or folder")
    try:
        keys = reader.keys()
        if any(".up_blocks." in key or ".down_blocks." in key for key in keys):
            layout, source = key_maps.DIFFUSERS, ComponentSource(reader, aliases=key_maps.DIFFUSERS_VAE_ALIASES)
        else:
            prefix = "first_stage_model." if any(k.startswith("first_stage_model.") for k in keys) else ""
            layout, source = key_maps.ORIGINAL, ComponentSource(reader, prefix)
        plans = {
            "decoder": ComponentPlan("decoder", key_maps.DECODER, vae_config, layout, source,
                                     unused=(r"^encoder\.", r"^quant_conv\.", r"^loss\.", r"^model_ema\.")),
            "image_encoder": ComponentPlan("image_encoder", key_maps.IMAGE_ENCODER, vae_config, layout, source,
                                           unused=(r"^decoder\.", r"^post_quant_conv\.", r"^loss\.",
                                                   r"^model_ema\.")),
        }
        for plan in plans.values():
            _as_input_error(plan.check_keys)
    except BaseException:
        reader.close()
        raise
    return plans, [reader], scaling


def load_sdxl_checkpoint(path, *, prediction_type=None, loras=(), vae=None):
    """``(SDXLConfig, models.Weights)`` of an SDXL checkpoint; ``models.build_all(config, weights)`` builds and
    fills every component (and closes the files). ``loras``: ``(path, scale)`` pairs merged into each component
    after it is filled (kohya ``lora_unet_`` / ``lora_te1_`` / ``lora_te2_`` or diffusers / PEFT files).
    ``vae``: a separate VAE replacing the checkpoint's (see ``open_vae``; its folder's ``scaling_factor`` is
    used)."""
    from sd_keras.weights.lora import read_lora

    lora_files = [(read_lora(lora_path), scale) for lora_path, scale in loras]
    checkpoint = open_sdxl_checkpoint(path, prediction_type=prediction_type)
    if vae is not None:
        try:
            plans, readers, scaling = open_vae(vae, checkpoint.config.vae)
        except BaseException:
            checkpoint.close()
            raise
        checkpoint.plans.update(plans)
        checkpoint._readers.extend(readers)
        if scaling is not None and scaling != checkpoint.config.vae.scaling_factor:
            checkpoint.config = dataclasses.replace(
                checkpoint.config, vae=dataclasses.replace(checkpoint.config.vae, scaling_factor=scaling))
        checkpoint.notes.append((logging.INFO, f"VAE from {vae}"))
        LOG.info("%s: VAE from %s", path, vae)
    return checkpoint.config, checkpoint.weights(lora_files)
