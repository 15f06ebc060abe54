"""Tiny diffusers / transformers Stable Diffusion models for checkpoint tests (CPU torch, random weights).

``build(kind)`` makes a UNet2DConditionModel, AutoencoderKL and CLIPTextModel with small, non-default sizes:

- ``"sd1"``: 8 heads per level, 1x1-conv projections, quick_gelu text encoder (OpenAI CLIP, HF layout),
  an attention-free second level;
- ``"sd2"``: 64-wide heads, linear projections, exact-GELU text encoder (OpenCLIP in single files), two
  ResBlocks per level, v-prediction, tokenizer padding with "!";
- ``"inpaint"``: the sd1 UNet with 9 input channels;

``context_width`` widens the text encoder and the UNet's cross-attention (1024 is what marks an SD 2.x file).

``save_diffusers_folder`` writes what ``StableDiffusionPipeline.save_pretrained`` writes for the parts we read;
``to_original_state_dict`` renames a diffusers state dict to the original (CompVis / Stability) single-file
layout: SD 2 text encoders either as Stability's files hold them (the whole OpenCLIP text tower: one more layer
than SD 2 uses, ``text_projection``, ``logit_scale``) or as diffusers'
``scripts/convert_diffusers_to_original_stable_diffusion.py`` writes them (only the layers of the diffusers text
encoder, no projection); optionally with EMA weights of the UNet under the original training code's names
(``model_ema.`` + the parameter name ``diffusion_model.input_blocks.0.0.weight`` with its dots removed).
The renaming is written here from the original code's module structure (``openaimodel.py`` / ``model.py`` /
OpenCLIP's ``Transformer``), independently of ``sd_keras.weights.key_maps``, so that the tests
check the tables against a second account of the same facts.
"""

import json
import os

import numpy as np
import torch

GROUPS = 32  # the original code always uses 32 GroupNorm groups
VAE_CHANNELS = (32, 32, 64, 64)  # 4 levels: the usual 8x latent downsampling


def _unet_kwargs(kind, context_width=None):
    kwargs = _unet_kwargs_of(kind)
    if context_width is not None:
        kwargs["cross_attention_dim"] = context_width
    return kwargs


def _unet_kwargs_of(kind):
    if kind in ("sd1", "inpaint"):
        return dict(sample_size=8, in_channels=9 if kind == "inpaint" else 4, out_channels=4,
                    block_out_channels=(32, 64), layers_per_block=1,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                    attention_head_dim=8, cross_attention_dim=128, norm_num_groups=GROUPS)
    return dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 128), layers_per_block=2,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                attention_head_dim=(1, 2), cross_attention_dim=128, use_linear_projection=True,
                norm_num_groups=GROUPS)


def _text_kwargs(kind, context_width=None):
    common = dict(vocab_size=49408, hidden_size=128, intermediate_size=256, num_attention_heads=2,
                  max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407)
    if context_width is not None:  # a small vocabulary keeps a wide encoder small
        common.update(vocab_size=1000, hidden_size=context_width, num_attention_heads=context_width // 64)
    if kind == "sd2":
        return dict(common, num_hidden_layers=3, hidden_act="gelu", pad_token_id=0)
    return dict(common, num_hidden_layers=2, hidden_act="quick_gelu", pad_token_id=49407)


def _randomize(module, generator):
    """Random parameters everywhere (norm affines too), small enough to keep activations in range."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("weight") and parameter.ndim == 1:  # norms: around 1
                parameter.copy_(1.0 + 0.1 * torch.randn(parameter.shape, generator=generator))
            elif parameter.ndim == 1:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
            else:
                fan_in = int(np.prod(parameter.shape[1:])) if parameter.ndim > 1 else 1
                scale = 1.0 / np.sqrt(fan_in) if "embedding" not in name else 0.1
                parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))


def build(kind, seed=0, *, context_width=None):
    """``{"unet", "vae", "text_encoder", "kind", "prediction_type"}`` of tiny random torch models (eval mode)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    generator = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel(**_unet_kwargs(kind, context_width))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=VAE_CHANNELS,
                        layers_per_block=1, latent_channels=4, norm_num_groups=GROUPS, sample_size=64)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_kwargs(kind, context_width)))
    for module in (unet, vae, text_encoder):
        _randomize(module, generator)
        module.eval()
    return {"kind": kind, "unet": unet, "vae": vae, "text_encoder": text_encoder,
            "prediction_type": "v_prediction" if kind == "sd2" else "epsilon"}


def save_diffusers_folder(models, folder):
    """A diffusers pipeline folder: model_index.json, unet/, vae/, text_encoder/, scheduler/, tokenizer/."""
    os.makedirs(folder, exist_ok=True)
    models["unet"].save_pretrained(os.path.join(folder, "unet"))
    models["vae"].save_pretrained(os.path.join(folder, "vae"))
    models["text_encoder"].save_pretrained(os.path.join(folder, "text_encoder"))
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump({"_class_name": "PNDMScheduler", "prediction_type": models["prediction_type"],
                   "num_train_timesteps": 1000, "beta_schedule": "scaled_linear"}, f)
    os.makedirs(os.path.join(folder, "tokenizer"), exist_ok=True)
    pad = "!" if models["kind"] == "sd2" else "<|endoftext|>"
    with open(os.path.join(folder, "tokenizer", "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad,
                   "unk_token": "<|endoftext|>"}, f)
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                   "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"]}, f)
    return folder


# ------------------------------------------------------------------------- diffusers -> original layout
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_first(rest, table):
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def _unet_key(key, unet_config):
    per = unet_config["layers_per_block"]
    levels = len(unet_config["block_out_channels"])
    attention = [kind.startswith("CrossAttn") for kind in unet_config["down_block_types"]]
    parts = key.split(".")
    simple = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for old, new in simple.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    if parts[0] == "down_blocks":
        level = int(parts[1])
        if parts[2] == "resnets":
            block = 1 + level * (per + 1) + int(parts[3])
            return f"input_blocks.{block}.0." + _rename_first(".".join(parts[4:]), _UNET_RESNET)
        if parts[2] == "attentions":
            block = 1 + level * (per + 1) + int(parts[3])
            return f"input_blocks.{block}.1." + ".".join(parts[4:])
        if parts[2] == "downsamplers":  # down_blocks.l.downsamplers.0.conv.weight
            return f"input_blocks.{1 + level * (per + 1) + per}.0.op." + ".".join(parts[5:])
    if parts[0] == "mid_block":
        if parts[1] == "resnets":
            return f"middle_block.{2 * int(parts[2])}." + _rename_first(".".join(parts[3:]), _UNET_RESNET)
        return "middle_block.1." + ".".join(parts[3:])
    if parts[0] == "up_blocks":
        u = int(parts[1])
        level_has_attention = attention[levels - 1 - u]
        if parts[2] == "resnets":
            return f"output_blocks.{u * (per + 1) + int(parts[3])}.0." + _rename_first(".".join(parts[4:]),
                                                                                      _UNET_RESNET)
        if parts[2] == "attentions":
            return f"output_blocks.{u * (per + 1) + int(parts[3])}.1." + ".".join(parts[4:])
        if parts[2] == "upsamplers":
            slot = 2 if level_has_attention else 1
            return f"output_blocks.{u * (per + 1) + per}.{slot}.conv." + ".".join(parts[5:])
    raise KeyError(f"no original name for UNet key {key}")


def _vae_key(key, levels):
    parts = key.split(".")
    if parts[0] in ("quant_conv", "post_quant_conv"):
        return key
    part, rest = parts[0], parts[1:]
    if rest[0] in ("conv_in", "conv_out"):
        return key
    if rest[0] == "conv_norm_out":
        return f"{part}.norm_out." + ".".join(rest[1:])
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            tail = ".".join(rest[3:]).replace("conv_shortcut", "nin_shortcut")
            return f"{part}.mid.block_{int(rest[2]) + 1}." + tail
        return f"{part}.mid.attn_1." + _rename_first(".".join(rest[3:]), _VAE_ATTENTION)
    if rest[0] in ("down_blocks", "up_blocks"):
        index = int(rest[1])
        level = index if rest[0] == "down_blocks" else levels - 1 - index
        group = "down" if rest[0] == "down_blocks" else "up"
        if rest[2] == "resnets":
            tail = ".".join(rest[4:]).replace("conv_shortcut", "nin_shortcut")
            return f"{part}.{group}.{level}.block.{rest[3]}." + tail
        sampler = "downsample" if rest[2] == "downsamplers" else "upsample"
        return f"{part}.{group}.{level}.{sampler}." + ".".join(rest[4:])
    raise KeyError(f"no original name for VAE key {key}")


def _open_clip_text(state, generator, width, intermediate, whole_tower=True):
    """HF CLIPTextModel tensors → OpenCLIP's names; ``whole_tower``: plus the unused last layer and the
    projection Stability's SD 2 files hold (diffusers' conversion script writes neither)."""
    out = {"token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
           "ln_final.weight": state["text_model.final_layer_norm.weight"],
           "ln_final.bias": state["text_model.final_layer_norm.bias"]}
    layers = sorted({int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers.")})
    for i in layers:
        hf, oc = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        out[oc + "attn.in_proj_weight"] = torch.cat([state[hf + f"self_attn.{p}_proj.weight"] for p in "qkv"])
        out[oc + "attn.in_proj_bias"] = torch.cat([state[hf + f"self_attn.{p}_proj.bias"] for p in "qkv"])
        for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                             ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            out[oc + ours + ".weight"] = state[hf + theirs + ".weight"]
            out[oc + ours + ".bias"] = state[hf + theirs + ".bias"]
    if not whole_tower:  # transformers < 4.31 kept position_ids in the state dict; the script renames nothing
        out["transformer.text_model.embeddings.position_ids"] = torch.arange(state[
            "text_model.embeddings.position_embedding.weight"].shape[0])[None]
        return out
    extra = f"transformer.resblocks.{len(layers)}."  # SD 2 conditions on the penultimate layer: never used
    shapes = {"attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,),
              "attn.out_proj.weight": (width, width), "attn.out_proj.bias": (width,), "ln_1.weight": (width,),
              "ln_1.bias": (width,), "ln_2.weight": (width,), "ln_2.bias": (width,),
              "mlp.c_fc.weight": (intermediate, width), "mlp.c_fc.bias": (intermediate,),
              "mlp.c_proj.weight": (width, intermediate), "mlp.c_proj.bias": (width,)}
    for name, shape in shapes.items():
        out[extra + name] = torch.randn(shape, generator=generator)
    out["text_projection"] = torch.randn((width, width), generator=generator)
    out["logit_scale"] = torch.tensor(4.6)
    return out


def to_original_state_dict(models, *, with_junk=True, open_clip="stability", ema_unet=None, ema_only=False):
    """One original-layout state dict (torch tensors) of the three models, as a single-file checkpoint has it.

    ``open_clip`` (SD 2 only): ``"stability"`` (the whole OpenCLIP text tower) or ``"diffusers_script"`` (what
    diffusers' conversion script writes). ``ema_unet``: a UNet whose weights are added as the EMA copy
    (``model_ema.*``); ``ema_only``: the file holds the EMA copy and no ``model.diffusion_model.*``.
    """
    if open_clip not in ("stability", "diffusers_script"):
        raise ValueError(f"open_clip={open_clip!r}")
    generator = torch.Generator().manual_seed(123)
    unet, vae, text = models["unet"], models["vae"], models["text_encoder"]
    out = {}
    if not ema_only:
        for key, value in unet.state_dict().items():
            out["model.diffusion_model." + _unet_key(key, unet.config)] = value
    if ema_unet is not None:  # LitEma buffers: the parameter names of LatentDiffusion.model without dots
        for key, value in ema_unet.state_dict().items():
            out["model_ema." + ("diffusion_model." + _unet_key(key, ema_unet.config)).replace(".", "")] = value
    levels = len(vae.config.block_out_channels)
    for key, value in vae.state_dict().items():
        name = _vae_key(key, levels)
        if ".mid.attn_1." in name and name.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original VAE attention uses 1x1 convolutions
        out["first_stage_model." + name] = value
    # SD 1 files hold transformers 4's names (text_model.*); transformers 5's state dict drops that level
    text_state = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in text.state_dict().items()}
    if models["kind"] == "sd2":
        tower = _open_clip_text(text_state, generator, text.config.hidden_size, text.config.intermediate_size,
                                whole_tower=open_clip == "stability")
        out.update({"cond_stage_model.model." + k: v for k, v in tower.items()})
    else:
        out.update({"cond_stage_model.transformer." + k: v for k, v in text_state.items()})
        out.setdefault("cond_stage_model.transformer.text_model.embeddings.position_ids",
                       torch.arange(77)[None])
    if with_junk or ema_unet is not None:  # what real training checkpoints carry next to the weights
        out["alphas_cumprod"] = torch.linspace(1, 0, 1000)
        out["model_ema.decay"] = torch.tensor(0.9999)
        out["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def save_original_safetensors(models, path, dtype=None, **layout):
    """``layout``: the options of ``to_original_state_dict``."""
    from safetensors.torch import save_file

    state = to_original_state_dict(models, **layout)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, path)
    return path


def save_original_ckpt(models, path, global_step=875000, **layout):
    """A training-style ``.ckpt``: ``{"state_dict": ..., "global_step": ..., "epoch": ...}`` via torch.save
    (``global_step=None``: ``{"state_dict": ...}`` alone, as diffusers' conversion script writes)."""
    content = {"state_dict": to_original_state_dict(models, **layout)}
    if global_step is not None:
        content.update(global_step=global_step, epoch=3)
    torch.save(content, path)
    return path


# ---------------------------------------------------------------------------------------- reference outputs
def unet_output(models, latent_nhwc, timesteps, context):
    with torch.no_grad():
        sample = torch.from_numpy(np.ascontiguousarray(latent_nhwc.transpose(0, 3, 1, 2)))
        out = models["unet"](sample, torch.from_numpy(np.asarray(timesteps, np.float32)),
                             encoder_hidden_states=torch.from_numpy(context)).sample
    return out.numpy().transpose(0, 2, 3, 1)


def text_output(models, tokens):
    with torch.no_grad():
        return models["text_encoder"](torch.from_numpy(tokens.astype(np.int64))).last_hidden_state.numpy()


def decoder_output(models, latent_nhwc):
    with torch.no_grad():
        z = torch.from_numpy(np.ascontiguousarray(latent_nhwc.transpose(0, 3, 1, 2)))
        return models["vae"].decode(z).sample.numpy().transpose(0, 2, 3, 1)


def encoder_output(models, image_nhwc):
    """The posterior mean times the scaling factor (what sd_keras's image encoder returns)."""
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(image_nhwc.transpose(0, 3, 1, 2)))
        mean = models["vae"].encode(x).latent_dist.mean * models["vae"].config.scaling_factor
    return mean.numpy().transpose(0, 2, 3, 1)


# --------------------------------------------------------------------------------------------------- LoRA
UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                     "conv1", "conv2"]
TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def add_peft_lora(models, *, rank=4, alpha=8.0, seed=1, adapter_name="default", unet_targets=UNET_LORA_TARGETS,
                  text_targets=TEXT_LORA_TARGETS):
    """Add a random PEFT LoRA adapter (UNet: attention, projections, feed-forward and ResBlock convs; text
    encoder: attention and MLP) to the torch models in place; returns {"unet": state dict, "text_encoder": ...}
    in PEFT naming (``<module>.lora_A.weight``)."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    generator = torch.Generator().manual_seed(seed)
    states = {}
    for part, targets in (("unet", unet_targets), ("text_encoder", text_targets)):
        if not targets:
            continue
        module = models[part]
        # PEFT's own injection (what diffusers' add_adapter and transformers' add_adapter call)
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets,
                                           init_lora_weights=False), module, adapter_name=adapter_name)
        with torch.no_grad():
            for name, parameter in module.named_parameters():
                if "lora_A" in name or "lora_B" in name:
                    fan_in = int(np.prod(parameter.shape[1:]))
                    parameter.copy_(0.3 / np.sqrt(fan_in) * torch.randn(parameter.shape, generator=generator))
        states[part] = {k: v.detach().clone() for k, v in
                        get_peft_model_state_dict(module, adapter_name=adapter_name).items()}
    return states


def save_peft_lora(states, folder, *, rank, alpha):
    """The file ``StableDiffusionPipeline.save_lora_weights`` writes (with its adapter metadata)."""
    from diffusers import StableDiffusionPipeline

    metadata = {"r": rank, "lora_alpha": alpha}
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=states["unet"],
                                              text_encoder_lora_layers=states["text_encoder"],
                                              unet_lora_adapter_metadata=dict(metadata),
                                              text_encoder_lora_adapter_metadata=dict(metadata))
    return os.path.join(folder, "pytorch_lora_weights.safetensors")


def save_kohya_lora(states, path, *, alpha):
    """The same LoRA in kohya's naming: ``lora_unet_<module with _>.lora_down.weight`` / ``lora_up`` / ``alpha``."""
    from safetensors.torch import save_file

    out = {}
    for part, prefix in (("unet", "lora_unet_"), ("text_encoder", "lora_te_")):
        for key, value in states[part].items():
            if not key.endswith(".lora_A.weight"):
                continue
            module = key[: -len(".lora_A.weight")]
            if part == "text_encoder" and not module.startswith("text_model."):
                module = "text_model." + module  # kohya names follow transformers 4's CLIPTextModel
            name = prefix + module.replace(".", "_")
            out[name + ".lora_down.weight"] = value.contiguous()
            out[name + ".lora_up.weight"] = states[part][key.replace("lora_A", "lora_B")].contiguous()
            out[name + ".alpha"] = torch.tensor(float(alpha))
    save_file(out, path)
    return path


def save_attn_procs_lora(states, path):
    """Attention-only LoRA in the attention-processor layout of ``unet.save_attn_procs`` (older diffusers):
    ``...attn1.processor.to_q_lora.down.weight`` / ``up.weight``; ``to_out.0`` is ``to_out_lora``."""
    from safetensors.torch import save_file

    out = {}
    for key, value in states["unet"].items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        attention, _, projection = module.rpartition(".to_")
        projection = "to_" + projection.replace(".0", "")
        name = f"{attention}.processor.{projection}_lora"
        out[name + ".down.weight"] = value.contiguous()
        out[name + ".up.weight"] = states["unet"][key.replace("lora_A", "lora_B")].contiguous()
    save_file(out, path)
    return path
