"""Tiny diffusers / transformers SDXL models for the SDXL tests (CPU torch, random weights).

``build(kind)`` makes SDXL-shaped models with small, deliberately odd sizes:

- ``"base"``: CLIP text encoder 64 wide (quick_gelu) and a ``CLIPTextModelWithProjection`` 128 wide (exact
  GELU, projection 96: not its width), UNet ``addition_embed_type="text_time"`` with levels 64/64/192 (no
  attention at the first), transformer depth per level (1, 2, 3), 1 and 3 heads of 64 (sgm's head width, so
  that single files can be read back), 8-wide time-id sinusoids, context 64 + 128;
- ``"refiner"``: the second encoder alone, 4 levels (attention in the middle two), 5 time ids;
- ``"inpaint"``: the base UNet with 9 input channels.

``save_diffusers_folder`` writes what ``StableDiffusionXLPipeline.save_pretrained`` writes for the parts we read
(``variant="fp16"``: half-precision ``*.fp16.safetensors``). ``to_original_state_dict`` renames the models to the
layout of Stability's single files (``sgm``): the UNet and VAE as the SD helper renames them
(``tests/diffusers_models.py``) plus ``label_emb.0.0/0.2`` for the added embedding; CLIP ViT-L under
``conditioner.embedders.0.transformer.`` with its Hugging Face names; OpenCLIP under
``conditioner.embedders.1.model.`` (the refiner's ``conditioner.embedders.0.model.``) with fused ``in_proj``,
``ln_final``, ``text_projection`` as the (in, out) matrix ``x @ P`` (diffusers' single-file loader transposes it
into ``text_projection.weight``) and ``logit_scale``. These facts come from diffusers' single-file loading code
(``loaders/single_file_utils.py``: ``convert_open_clip_checkpoint``, the ``label_emb`` rows of its LDM map, the
``conditioner.embedders`` key names it detects SDXL by), not from sd_keras's tables.
"""

import json
import os

import numpy as np
import torch

from diffusers_models import GROUPS, VAE_CHANNELS, _open_clip_text, _randomize, _unet_key, _vae_key

TIME_DIM = 8
VOCAB = 1000  # a small vocabulary: the end token is its last id, as in CLIP's


def _text_kwargs(width, heads, layers, activation, **extra):
    return dict(vocab_size=VOCAB, hidden_size=width, intermediate_size=2 * width, num_attention_heads=heads,
                num_hidden_layers=layers, hidden_act=activation, max_position_embeddings=77, bos_token_id=VOCAB - 2,
                eos_token_id=VOCAB - 1, pad_token_id=VOCAB - 1, **extra)


def _unet_kwargs(kind):
    if kind == "refiner":
        return dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 64, 128, 128),
                    layers_per_block=1,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    attention_head_dim=(1, 1, 2, 2), transformer_layers_per_block=1, cross_attention_dim=128,
                    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
                    projection_class_embeddings_input_dim=5 * TIME_DIM + 96, norm_num_groups=GROUPS)
    return dict(sample_size=8, in_channels=9 if kind == "inpaint" else 4, out_channels=4,
                block_out_channels=(64, 64, 192), layers_per_block=1,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=(1, 1, 3), transformer_layers_per_block=(1, 2, 3), cross_attention_dim=64 + 128,
                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
                projection_class_embeddings_input_dim=6 * TIME_DIM + 96, norm_num_groups=GROUPS)


def build_vae(generator):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=VAE_CHANNELS,
                        layers_per_block=1, latent_channels=4, norm_num_groups=GROUPS, sample_size=64,
                        scaling_factor=0.13025, force_upcast=True)
    _randomize(vae, generator)
    return vae.eval()


def build(kind="base", seed=0):
    """``{"kind", "unet", "vae", "text_encoder" (None for the refiner), "text_encoder_2"}`` (eval mode)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    generator = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel(**_unet_kwargs(kind))
    vae = build_vae(generator)
    text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_text_kwargs(128, 2, 3, "gelu", projection_dim=96)))
    text = None if kind == "refiner" else CLIPTextModel(CLIPTextConfig(**_text_kwargs(64, 1, 3, "quick_gelu")))
    for module in (unet, text, text_2):
        if module is not None:
            _randomize(module, generator)
            module.eval()
    return {"kind": kind, "unet": unet, "vae": vae, "text_encoder": text, "text_encoder_2": text_2}


def save_diffusers_folder(models, folder, *, variant=None):
    """A diffusers SDXL pipeline folder; ``variant="fp16"``: float16 weights in ``*.fp16.safetensors``."""
    os.makedirs(folder, exist_ok=True)
    parts = [p for p in ("unet", "vae", "text_encoder", "text_encoder_2") if models[p] is not None]
    for part in parts:
        module = models[part]
        if variant == "fp16":
            module = _copy_half(module)
        module.save_pretrained(os.path.join(folder, part), variant=variant)
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump({"_class_name": "EulerDiscreteScheduler", "prediction_type": "epsilon",
                   "num_train_timesteps": 1000, "beta_schedule": "scaled_linear"}, f)
    tokenizers = {"tokenizer_2": "!"} if models["kind"] == "refiner" else {"tokenizer": "<|endoftext|>",
                                                                           "tokenizer_2": "!"}
    for name, pad in tokenizers.items():
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        with open(os.path.join(folder, name, "special_tokens_map.json"), "w") as f:
            json.dump({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad,
                       "unk_token": "<|endoftext|>"}, f)
    refiner = models["kind"] == "refiner"
    index = {"_class_name": "StableDiffusionXLImg2ImgPipeline" if refiner else "StableDiffusionXLPipeline",
             "force_zeros_for_empty_prompt": not refiner, "requires_aesthetics_score": refiner}
    for part in parts:
        index[part] = ["diffusers", type(models[part]).__name__]
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f)
    return folder


def _copy_half(module):
    import copy

    return copy.deepcopy(module).to(torch.float16)


# ------------------------------------------------------------------------- diffusers -> original layout
def _hf_text_state(module):
    # transformers 5 drops the "text_model." level from CLIPTextModel's state dict; the files keep it
    state = module.state_dict()
    return {(k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v
            for k, v in state.items()}


def to_original_state_dict(models):
    """One original-layout (sgm) state dict of the models, as ``sd_xl_base_1.0.safetensors`` holds them."""
    unet, vae = models["unet"], models["vae"]
    out = {}
    for key, value in unet.state_dict().items():
        if key.startswith("add_embedding."):
            name = key.replace("add_embedding.linear_1", "label_emb.0.0").replace("add_embedding.linear_2",
                                                                                   "label_emb.0.2")
        else:
            name = _unet_key(key, unet.config)
        out["model.diffusion_model." + name] = value
    levels = len(vae.config.block_out_channels)
    for key, value in vae.state_dict().items():
        name = _vae_key(key, levels)
        if ".mid.attn_1." in name and name.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out["first_stage_model." + name] = value
    if models["text_encoder"] is not None:
        for key, value in _hf_text_state(models["text_encoder"]).items():
            out["conditioner.embedders.0.transformer." + key] = value
        out["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    text_2 = models["text_encoder_2"]
    state = _hf_text_state(text_2)
    tower = _open_clip_text(state, None, text_2.config.hidden_size, text_2.config.intermediate_size,
                            whole_tower=False)
    tower = {k: v for k, v in tower.items() if "position_ids" not in k}
    tower["text_projection"] = state["text_projection.weight"].T  # OpenCLIP: x @ text_projection
    tower["logit_scale"] = torch.tensor(4.6052)
    prefix = "conditioner.embedders.0.model." if models["kind"] == "refiner" else "conditioner.embedders.1.model."
    out.update({prefix + k: v for k, v in tower.items()})
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def save_original_safetensors(models, path, dtype=None):
    from safetensors.torch import save_file

    state = to_original_state_dict(models)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, path)
    return path


# ---------------------------------------------------------------------------------------- reference outputs
def tokens(batch=2, seed=0, pad=VOCAB - 1):
    """Token ids as a tokenizer gives them: start, words, the end token (the vocabulary's last id), padding."""
    rng = np.random.default_rng(seed)
    ids = np.full((batch, 77), pad, np.int64)
    for b in range(batch):
        length = 5 + 7 * b
        ids[b, 0] = VOCAB - 2
        ids[b, 1:length] = rng.integers(1, VOCAB - 2, length - 1)
        ids[b, length] = VOCAB - 1
    return ids


def text_outputs(models, ids):
    """``(penultimate hidden states of text_encoder or None, of text_encoder_2, pooled text_embeds)``."""
    with torch.no_grad():
        ids_t = torch.from_numpy(ids)
        hidden = None
        if models["text_encoder"] is not None:
            hidden = models["text_encoder"](ids_t, output_hidden_states=True).hidden_states[-2].numpy()
        out = models["text_encoder_2"](ids_t, output_hidden_states=True)
        return hidden, out.hidden_states[-2].numpy(), out.text_embeds.numpy()


def unet_output(models, latent_nhwc, timesteps, context, text_embeds, time_ids):
    with torch.no_grad():
        sample = torch.from_numpy(np.ascontiguousarray(latent_nhwc.transpose(0, 3, 1, 2)))
        out = models["unet"](sample, torch.from_numpy(np.asarray(timesteps, np.float32)),
                             encoder_hidden_states=torch.from_numpy(context),
                             added_cond_kwargs={"text_embeds": torch.from_numpy(text_embeds),
                                                "time_ids": torch.from_numpy(time_ids)}).sample
    return out.numpy().transpose(0, 2, 3, 1)


# --------------------------------------------------------------------------------------------------- LoRA
UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                     "conv1", "conv2", "linear_1"]  # linear_1: time_embedding and add_embedding
TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def add_peft_lora(models, *, rank=4, alpha=8.0, seed=1):
    """A random PEFT LoRA on the UNet and both text encoders (every layer of CLIP ViT-L, its last too, as
    trainers do), injected in place; returns {part: state dict in PEFT naming}."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    generator = torch.Generator().manual_seed(seed)
    states = {}
    for part, targets in (("unet", UNET_LORA_TARGETS), ("text_encoder", TEXT_LORA_TARGETS),
                          ("text_encoder_2", TEXT_LORA_TARGETS)):
        module = models[part]
        if module is None:
            continue
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets,
                                           init_lora_weights=False), module, adapter_name="default")
        with torch.no_grad():
            for name, parameter in module.named_parameters():
                if "lora_A" in name or "lora_B" in name:
                    fan_in = int(np.prod(parameter.shape[1:]))
                    parameter.copy_(0.3 / np.sqrt(fan_in) * torch.randn(parameter.shape, generator=generator))
        states[part] = {k: v.detach().clone() for k, v in
                        get_peft_model_state_dict(module, adapter_name="default").items()}
    return states


def save_peft_lora(states, folder, *, rank, alpha):
    """The file ``StableDiffusionXLPipeline.save_lora_weights`` writes (with its adapter metadata)."""
    from diffusers import StableDiffusionXLPipeline

    metadata = {"r": rank, "lora_alpha": alpha}
    StableDiffusionXLPipeline.save_lora_weights(
        folder, unet_lora_layers=states["unet"], text_encoder_lora_layers=states["text_encoder"],
        text_encoder_2_lora_layers=states["text_encoder_2"], unet_lora_adapter_metadata=dict(metadata),
        text_encoder_lora_adapter_metadata=dict(metadata), text_encoder_2_lora_adapter_metadata=dict(metadata))
    return os.path.join(folder, "pytorch_lora_weights.safetensors")


def save_kohya_lora(states, unet_config, path, *, alpha):
    """The same LoRA as kohya's sd-scripts writes for SDXL: ``lora_unet_`` + the original (sgm) module name,
    ``lora_te1_`` / ``lora_te2_`` + transformers' names, dots as underscores, ``lora_down`` / ``lora_up`` /
    ``alpha``."""
    from safetensors.torch import save_file

    out = {}
    for part, prefix in (("unet", "lora_unet_"), ("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_")):
        for key, value in states[part].items():
            if not key.endswith(".lora_A.weight"):
                continue
            module = key[: -len(".lora_A.weight")]
            if part == "unet":
                if module.startswith("add_embedding."):
                    module = module.replace("add_embedding.linear_1", "label_emb.0.0")
                else:
                    module = _unet_key(module + ".weight", unet_config)[: -len(".weight")]
            elif not module.startswith("text_model."):
                module = "text_model." + module
            name = prefix + module.replace(".", "_")
            out[name + ".lora_down.weight"] = value.contiguous()
            out[name + ".lora_up.weight"] = states[part][key.replace("lora_A", "lora_B")].contiguous()
            out[name + ".alpha"] = torch.tensor(float(alpha))
    save_file(out, path)
    return path
