"""diffusers folders: their ``config.json`` files translated to sd_keras configs, their weight files opened.

``open_diffusers(folder, prediction_type)`` returns a ``plans.Checkpoint``; ``unet_config_from_diffusers``,
``vae_config_from_diffusers`` and ``text_config_from_diffusers`` refuse the options sd_keras does not implement,
naming the file and the field.
"""

import json
import logging
import os

from sd_keras.config import TextEncoderConfig, UNetConfig, VAEConfig
from sd_keras.errors import InputError
from sd_keras.weights import key_maps
from sd_keras.weights.plans import (OPEN_CLIP_PAD_ID, OPENAI_CLIP_PAD_ID, Checkpoint, ComponentPlan, ComponentSource,
                                    check_prediction_type, model_config)
from sd_keras.weights.readers import MultiFile, open_tensor_file

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
        raise InputError(f"{path}: cannot read ({error.strerror})") from None
    except ValueError as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None


def _diffusers_reader(folder, part, stems=None):
    """The weights of ``folder/part``: the first of ``stems`` (default: the part's usual file names) found as
    safetensors or ``.bin``, sharded or not, plain before ``fp16``."""
    directory = os.path.join(folder, part)
    names = []
    for stem in stems or _DIFFUSERS_WEIGHT_NAMES[part]:
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
                raise InputError(f"{path}: empty weight_map")
            return MultiFile([open_tensor_file(os.path.join(directory, f)) for f in files])
        return open_tensor_file(path)
    raise InputError(f"{directory}: no weights file (expected one of {', '.join(names[:4])}, ...)")


def _as_list(value, count, what, path):
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise InputError(f"{path}: {what} has {len(value)} entries for {count} blocks")
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
            raise InputError(f"{path}: {what} {field}={config[field]!r} is not supported (sd_keras implements "
                             f"{allowed[0]!r})")


def _unet_heads(heads, channels, attention_levels, path):
    """diffusers gives heads per level (its ``attention_head_dim`` historically means the head count)."""
    used = [(h, c) for h, c, a in zip(heads, channels, attention_levels) if a] + [(heads[-1], channels[-1])]
    for h, c in used:
        if c % h:
            raise InputError(f"{path}: {c} channels are not divisible by {h} attention heads")
    if len({h for h, _ in used}) == 1:
        return {"num_heads": used[0][0], "head_size": None}
    if len({c // h for h, c in used}) == 1:
        return {"num_heads": None, "head_size": used[0][1] // used[0][0]}
    raise InputError(f"{path}: attention heads {heads} give neither a fixed head count nor a fixed head width per "
                     "level, which sd_keras's UNetConfig cannot express")


def unet_config_from_diffusers(config, path):
    """``UNetConfig`` of a diffusers ``UNet2DConditionModel`` config.json (raises on unsupported options)."""
    _check_fixed(config, _UNET_FIXED, path, "unet")
    for field in ("only_cross_attention", "mid_block_only_cross_attention"):
        if config.get(field) not in (None, False) and config.get(field) != [False] * len(config.get(field) or []):
            raise InputError(f"{path}: unet {field}={config[field]!r} is not supported")
    depth = config.get("transformer_layers_per_block", 1)
    if any(d != 1 for d in (depth if isinstance(depth, list) else [depth])):
        raise InputError(f"{path}: unet transformer_layers_per_block={depth!r} is not supported (only 1)")
    channels = tuple(config["block_out_channels"])
    down = config["down_block_types"]
    kinds = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
    if len(down) != len(channels) or any(kind not in kinds for kind in down):
        raise InputError(f"{path}: unet down_block_types {down} are not supported (CrossAttnDownBlock2D / "
                         "DownBlock2D, one per block_out_channels entry)")
    attention_levels = tuple(kinds[kind] for kind in down)
    expected_up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)]
    if list(config["up_block_types"]) != expected_up:
        raise InputError(f"{path}: unet up_block_types {config['up_block_types']} do not mirror the down blocks")
    layers = config.get("layers_per_block", 2)
    layers = _as_list(layers, len(channels), "layers_per_block", path)
    if len(set(layers)) != 1:
        raise InputError(f"{path}: unet layers_per_block {layers} differs per level, which is not supported")
    context_dim = config.get("cross_attention_dim", 1280)
    if isinstance(context_dim, list):
        if len(set(context_dim)) != 1:
            raise InputError(f"{path}: unet cross_attention_dim {context_dim} differs per level")
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
        raise InputError(f"{path}: vae blocks {config.get('down_block_types')} / {config.get('up_block_types')} "
                         "are not supported")
    if config.get("in_channels", 3) != config.get("out_channels", 3):
        raise InputError(f"{path}: vae in_channels != out_channels is not supported")
    return VAEConfig(block_out_channels=channels, layers_per_block=config.get("layers_per_block", 1),
                     image_channels=config.get("in_channels", 3), latent_channels=config.get("latent_channels", 4),
                     scaling_factor=float(config.get("scaling_factor", 0.18215)),
                     norm_groups=config.get("norm_num_groups", 32), norm_eps=1e-6)


_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh"}


def text_config_from_diffusers(config, path):
    """``TextEncoderConfig`` of a transformers ``CLIPTextModel`` config.json."""
    if config.get("model_type", "clip_text_model") != "clip_text_model":
        raise InputError(f"{path}: text encoder model_type {config.get('model_type')!r} is not supported "
                         "(clip_text_model)")
    activation = config.get("hidden_act", "quick_gelu")
    if activation not in _ACTIVATIONS:
        raise InputError(f"{path}: text encoder hidden_act {activation!r} is not supported")
    return TextEncoderConfig(vocab_size=config.get("vocab_size", 49408),
                             max_length=config.get("max_position_embeddings", 77),
                             width=config["hidden_size"], num_layers=config["num_hidden_layers"],
                             num_heads=config["num_attention_heads"], intermediate_size=config["intermediate_size"],
                             activation=_ACTIVATIONS[activation], layer_norm_eps=config.get("layer_norm_eps", 1e-5))


def tokenizer_pad_id(folder, name, default):
    """The pad token id that the tokenizer folder ``folder/name`` names (its vocabulary entry, as the reference
    tokenizer looks it up: "!" is id 0), or ``default`` when the folder names none."""
    from sd_keras.tokenizer import CLIPTokenizer

    for file_name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(folder, name, file_name)
        if not os.path.exists(path):
            continue
        pad = _read_json(path).get("pad_token")
        if isinstance(pad, dict):
            pad = pad.get("content")
        if isinstance(pad, str):
            try:
                return CLIPTokenizer().token_to_id(pad)
            except (KeyError, ValueError):
                raise InputError(f"{path}: pad token {pad!r} is not in the CLIP vocabulary") from None
    return default


def _pad_token_id(folder, text_config):
    # no tokenizer folder: OpenCLIP-derived text encoders (exact GELU) come with the pad-with-"!" tokenizer
    default = OPEN_CLIP_PAD_ID if text_config.activation == "gelu" else OPENAI_CLIP_PAD_ID
    return tokenizer_pad_id(folder, "tokenizer", default)


def _prediction_type(folder, prediction_type):
    """``(prediction type, where it came from)``: the one given, else the folder's scheduler config's, else
    ``epsilon``; checked."""
    scheduler_path = os.path.join(folder, "scheduler", "scheduler_config.json")
    source = "given"
    if prediction_type is None and os.path.exists(scheduler_path):
        prediction_type, source = _read_json(scheduler_path).get("prediction_type", "epsilon"), "scheduler config"
    source = source if prediction_type else "default"
    return check_prediction_type(prediction_type or "epsilon", scheduler_path), source


def _image_size(unet_json, vae, default_sample_size):
    """The image size of a UNet ``config.json``'s ``sample_size`` (latent pixels) through the VAE."""
    sample_size = unet_json.get("sample_size", default_sample_size)
    sample_size = tuple(sample_size) if isinstance(sample_size, (list, tuple)) else (sample_size, sample_size)
    return tuple(int(s) * vae.downsample_factor for s in sample_size)


def open_diffusers(folder, prediction_type):
    index_path = os.path.join(folder, "model_index.json")
    if os.path.exists(index_path):
        index = _read_json(index_path)
        if "text_encoder_2" in index or "XL" in str(index.get("_class_name", "")):
            raise InputError(f"{folder}: {index.get('_class_name')} (SDXL) folders are not supported; sd_keras "
                             "loads SD 1.x / 2.x")
    for part in ("unet", "vae", "text_encoder"):
        if not os.path.exists(os.path.join(folder, part, "config.json")):
            raise InputError(f"{folder}: not a diffusers Stable Diffusion folder ({part}/config.json is missing)")
    unet_json = _read_json(os.path.join(folder, "unet", "config.json"))
    vae_json = _read_json(os.path.join(folder, "vae", "config.json"))
    unet = unet_config_from_diffusers(unet_json, os.path.join(folder, "unet", "config.json"))
    vae = vae_config_from_diffusers(vae_json, os.path.join(folder, "vae", "config.json"))
    text = text_config_from_diffusers(_read_json(os.path.join(folder, "text_encoder", "config.json")),
                                      os.path.join(folder, "text_encoder", "config.json"))
    prediction_type, source = _prediction_type(folder, prediction_type)
    image_size = _image_size(unet_json, vae, 64)
    config = model_config(os.path.basename(os.path.normpath(folder)), text, unet, vae, image_size,
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
