"""Original single-file checkpoints (``.safetensors`` / ``.ckpt``): the architecture inferred from tensor shapes.

``open_single_file(path, prediction_type, ema)`` returns a ``plans.Checkpoint``. What the shapes cannot tell
follows the original code (see ``sd_keras.weights.checkpoints``); the prediction type is inferred as diffusers'
single-file loader does, the UNet weights are the plain or the EMA copy (``model_ema.*``).
"""

import logging
import os
import re

from sd_keras.config import TextEncoderConfig, UNetConfig, VAEConfig
from sd_keras.errors import InputError
from sd_keras.weights import key_maps
from sd_keras.weights.plans import (OPEN_CLIP_PAD_ID, OPENAI_CLIP_PAD_ID, Checkpoint, ComponentPlan, ComponentSource,
                                    check_prediction_type, model_config)
from sd_keras.weights.readers import CheckpointFormatError, open_tensor_file

SD2_CONTEXT_WIDTH = 1024  # OpenCLIP ViT-H/14: what marks an SD 2.x UNet
SD2_BASE_GLOBAL_STEP = 875000  # the SD 2.x 512 base training checkpoint (an epsilon model)
EMA_PREFIX = "model_ema."


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
        raise InputError(f"{source.reader.path}: cannot infer the {what}: {source.file_key(name)} is missing")
    return source.shape(name)


def infer_unet_config(source, open_clip):
    """``UNetConfig`` from the tensor shapes of an original-layout UNet (``model.diffusion_model.*``)."""
    path = source.reader.path
    keys = source.keys()
    if any(key.startswith("label_emb.") for key in keys):
        raise InputError(f"{path}: a class-conditioned UNet (label_emb: SDXL or unCLIP) is not supported")
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
        raise InputError(f"{path}: the UNet's input blocks ({per_level} ResBlocks per level) do not form the SD "
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
        raise InputError(f"{path}: unsupported UNet shapes ({error})") from None


def infer_vae_config(source):
    """``VAEConfig`` from the tensor shapes of an original-layout VAE (``first_stage_model.*``)."""
    keys = source.keys()
    conv_in = _need(source, "encoder.conv_in.weight", "VAE image channels")
    levels = _indices(keys, r"encoder\.down\.(\d+)\.")
    if not levels:
        raise InputError(f"{source.reader.path}: cannot infer the VAE levels (no encoder.down.* tensors)")
    per_level = _indices(keys, r"encoder\.down\.0\.block\.(\d+)\.")
    channels = tuple(_need(source, f"encoder.down.{level}.block.0.conv1.weight", "VAE channels")[0]
                     for level in levels)
    quant = _need(source, "quant_conv.weight", "latent channels")
    try:
        return VAEConfig(block_out_channels=channels, layers_per_block=len(per_level), image_channels=conv_in[1],
                         latent_channels=quant[0] // 2, scaling_factor=0.18215, norm_groups=32, norm_eps=1e-6)
    except ValueError as error:
        raise InputError(f"{source.reader.path}: unsupported VAE shapes ({error})") from None


def _text_heads(width, path):
    if width % 64:
        raise InputError(f"{path}: cannot infer the attention heads of a {width}-wide text encoder (CLIP and "
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
        raise InputError(f"{path}: the OpenCLIP layers are not numbered 0..n-1 ({layers[:3]}...{layers[-3:]})")
    width = _need(source, "token_embedding.weight", "vocabulary")[1]
    whole_tower = "text_projection" in source or (width == SD2_CONTEXT_WIDTH and len(layers) == 24)
    used = len(layers) - 1 if whole_tower else len(layers)
    if used < 1:
        raise InputError(f"{path}: an OpenCLIP text encoder with {len(layers)} layer(s) and text_projection has "
                         "no layer SD 2 uses (it conditions on the penultimate)")
    return len(layers), used


def _text_shapes(source, open_clip):
    """``(vocabulary, width, context length, MLP width)`` of an OpenCLIP or a CLIP (Hugging Face names) text
    encoder, from its tensor shapes."""
    if open_clip:
        vocab, width = _need(source, "token_embedding.weight", "vocabulary")
        max_length = _need(source, "positional_embedding", "context length")[0]
        intermediate = _need(source, "transformer.resblocks.0.mlp.c_fc.weight", "MLP width")[0]
    else:
        vocab, width = _need(source, "text_model.embeddings.token_embedding.weight", "vocabulary")
        max_length = _need(source, "text_model.embeddings.position_embedding.weight", "context length")[0]
        intermediate = _need(source, "text_model.encoder.layers.0.mlp.fc1.weight", "MLP width")[0]
    return vocab, width, max_length, intermediate


def infer_text_config(source, open_clip):
    """``TextEncoderConfig`` from the tensor shapes of an SD 1 (HF CLIP) or SD 2 (OpenCLIP) text encoder."""
    path = source.reader.path
    vocab, width, max_length, intermediate = _text_shapes(source, open_clip)
    if open_clip:
        num_layers, activation = open_clip_layers(source)[1], "gelu"
    else:
        num_layers = len(_indices(source.keys(), r"text_model\.encoder\.layers\.(\d+)\."))
        activation = "quick_gelu"
    return TextEncoderConfig(vocab_size=vocab, max_length=max_length, width=width, num_layers=num_layers,
                             num_heads=_text_heads(width, path), intermediate_size=intermediate,
                             activation=activation, layer_norm_eps=1e-5)


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
        raise InputError(f"{path}: no EMA weights (model_ema.diffusion_model*) to load with ema=True / --ema; the "
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


def open_single_file(path, prediction_type, ema=False):
    reader = open_tensor_file(path)
    try:
        keys = reader.keys()
        if not keys:
            raise CheckpointFormatError(f"{path}: no tensors in the file")
        if any(key.startswith("conditioner.embedders.") for key in keys):
            raise InputError(f"{path}: an SDXL checkpoint (conditioner.embedders.*) is not supported; sd_keras "
                             "loads SD 1.x / 2.x")
        prefixes = key_maps.ORIGINAL_PREFIXES
        open_clip = any(key.startswith(prefixes["text_encoder_open_clip"]) for key in keys)
        text_prefix = prefixes["text_encoder_open_clip" if open_clip else "text_encoder_hf"]
        present = {name: any(key.startswith(prefixes[name]) for key in keys)
                   for name in ("diffusion_model", "vae")}
        present["diffusion_model"] |= any(key.startswith(EMA_PREFIX + "diffusion_model") for key in keys)
        present["text_encoder"] = any(key.startswith(text_prefix) for key in keys)
        if not any(present.values()):
            raise InputError(f"{path}: unknown key layout: no model.diffusion_model.*, model_ema.*, "
                             f"first_stage_model.* or cond_stage_model.* tensors (e.g. {sorted(keys)[:3]}); not an "
                             "SD 1.x / 2.x original-layout checkpoint")
        expected = {"diffusion_model": "UNet (model.diffusion_model.* or its EMA copy model_ema.*)",
                    "vae": "VAE (first_stage_model.*)", "text_encoder": "text encoder (cond_stage_model.*)"}
        missing = [expected[name] for name, found in present.items() if not found]
        if missing:
            raise InputError(f"{path}: the checkpoint has no {' and no '.join(missing)}; sd_keras needs all three")
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
        prediction_type = check_prediction_type(prediction_type, path)
        size = 768 if open_clip and prediction_type == "v_prediction" else 512
        stem = os.path.splitext(os.path.basename(path))[0]
        config = model_config(stem, text, unet, vae, (size, size), prediction_type,
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
