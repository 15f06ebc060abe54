"""Quantization modes of the LiteRT export and the representative data the integer modes calibrate on.

Modes (``--quantize``):

``fp32``       float32 weights and compute: the reference, gated at max-abs-relative error <= 1e-4.
``fp16``       float16 weights, dequantized to float32 at load (the converter's ``supported_types=[float16]``).
``int8``       dynamic-range: int8 weights (per channel), float activations quantized on the fly by the kernels.
``int8-full``  full integer: int8 weights and activations, ranges calibrated on a representative dataset recorded
               from real sampling trajectories (``record_trajectories``); inputs and outputs stay float32. A
               component whose int8 activations lose too much against Keras on that data (PSNR under
               ``INT8_ACTIVATIONS_MIN_PSNR_DB``; the VAE's and CLIP's activations have outliers) is converted
               again with int16 activations and int8 weights (the converter's 16x8 scheme, still integer-only
               where kernels allow); the manifest names each component's activation type.
``int4``       int4 weights through ``ai-edge-quantizer`` applied to the fp32 ``.tflite``: fully-connected and
               embedding weights blockwise (blocks of 32 along the input axis; the quantizer's only blockwise
               int4 configuration, executed with on-the-fly activation quantization), convolution weights per
               output channel, weight-only (dequantized to float before the convolution). The text encoder's
               token embedding (a GATHER op, not covered by the quantizer's int4 recipes) stays float32.

The TensorFlow Model Optimization Toolkit is not used: it works only with Keras 2 (``tf_keras``) and sets
``TF_USE_LEGACY_KERAS=1`` when imported, which would switch this process away from Keras 3.

Example:
    >>> check_mode("int8")
    'int8'
"""

import numpy as np

from sd_keras import files

MODES = ("fp32", "fp16", "int8", "int8-full", "int4")
INT4_BLOCK_SIZE = 32
INT8_ACTIVATIONS_MIN_PSNR_DB = 30.0  # int8-full: below this on the calibration data, use int16 activations


def check_mode(mode):
    """``mode`` if it is one of ``MODES``; ValueError naming the known modes otherwise."""
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; use one of {', '.join(MODES)}")
    return mode


def needs_representative_data(mode):
    return mode == "int8-full"


def converter_mode(mode):
    """The mode the TFLite converter produces; int4 starts from the fp32 model and is quantized afterwards."""
    return "fp32" if mode == "int4" else mode


def configure_converter(converter, mode, representative=None, *, integer_only=True, activations="int8"):
    """Set a ``tf.lite.TFLiteConverter``'s optimisation options for ``mode`` (TensorFlow backend only).

    Args:
        converter: the converter (from a SavedModel).
        mode: one of ``MODES`` except ``int4``.
        representative: for ``int8-full``, a list of feed dicts (input name -> array with the signature's shape).
        integer_only: ``int8-full`` with integer builtins only (``TFLITE_BUILTINS_INT8``); False allows float
            kernels where no int8 kernel exists.
        activations: ``int8-full``'s activation type: ``"int8"``, or ``"int16"`` (int8 weights, int16
            activations: the converter's 16x8 scheme, for components whose activations int8 cannot hold).
    """
    import tensorflow as tf

    check_mode(mode)
    builtins = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.target_spec.supported_ops = builtins
    if mode == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "int8-full":
        if not representative:
            raise ValueError("int8-full needs representative data (recorded sampling trajectories)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: iter(representative)
        if activations == "int16":
            int16 = tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            converter.target_spec.supported_ops = [int16] if integer_only else [int16, *builtins]
        elif activations != "int8":
            raise ValueError(f"int8-full activations must be int8 or int16, got {activations!r}")
        elif integer_only:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif mode == "int4":
        raise ValueError("int4 is applied to the fp32 model with quantize_int4, not by the converter")
    return converter


def quantize_int4(float_path, output_path, block_size=INT4_BLOCK_SIZE):
    """Write the int4 version of the float ``.tflite`` at ``float_path`` to ``output_path`` (atomic).

    Example:
        >>> quantize_int4("unet_fp32.tflite", "unet_int4.tflite")   # doctest: +SKIP
    """
    from ai_edge_quantizer import qtyping, quantizer

    granularity = getattr(qtyping.QuantGranularity, f"BLOCKWISE_{block_size}", None)
    if granularity is None:
        raise ValueError(f"int4 block size must be 32, 64, 128 or 256, got {block_size}")
    ops = qtyping.TFLOperationName
    engine = quantizer.Quantizer(str(float_path))
    for op in (ops.FULLY_CONNECTED, ops.EMBEDDING_LOOKUP):
        engine.add_dynamic_config(regex=".*", operation_name=op, num_bits=4, granularity=granularity)
    engine.add_weight_only_config(regex=".*", operation_name=ops.CONV_2D, num_bits=4,
                                  granularity=qtyping.QuantGranularity.CHANNELWISE)
    result = engine.quantize()
    with files.atomic_path(output_path) as temporary:
        result.export_model(temporary, overwrite=True)
    return output_path


CALIBRATION_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a red circle on a white background, simple shapes",
    "a cozy cabin in a snowy forest at night, oil painting",
    "portrait of a smiling woman, studio lighting",
)


def record_trajectories(model, *, prompts=CALIBRATION_PROMPTS, num_steps=4, sampler="Euler a",
                        guidance_scale=7.5, seed=0, image_size=None, images=None):
    """Run the Keras pipeline's sampling loop on ``prompts`` and record what each component sees.

    The loop is ``sd_keras.export.runner.denoise`` (the bundle's loop) with the Keras UNet behind a recording
    wrapper, so the recorded inputs are exactly those of a real generation: the UNet's guidance-pair latents,
    timestep embeddings and contexts at every step, the text encoder's tokens, the decoder's final latents and
    the VAE encoder's input images (the decoded outputs, which are real images of the model's distribution).

    Args:
        model: a ``StableDiffusion`` (its ``tokenizer``, ``config`` and Keras sub-models are used).
        prompts: one trajectory per prompt (seed ``seed + k``).
        num_steps, sampler, guidance_scale: the sampling settings of the trajectories.
        image_size: (height, width); default the model's native size.
        images: optional extra input images (H, W, 3) uint8 for the VAE encoder's samples.

    Returns:
        ``{component: [feed dict, ...]}``, each feed dict mapping the component's input names to float32/int32
        arrays with the export shapes (UNet batch 2, the others batch 1).
    """
    from sd_keras import noise as noise_lib
    from sd_keras.export.runner import denoise
    from sd_keras.schedulers import get_sampler

    height, width = image_size or model.config.image_size
    factor = model.config.vae.downsample_factor
    latent_shape = (height // factor, width // factor, model.config.vae.latent_channels)
    timestep_dim = model.config.unet.timestep_dim
    scheduler = get_sampler(sampler, num_steps, prediction_type=model.config.prediction_type)
    records = {"text_encoder": [], "diffusion_model": [], "decoder": [], "image_encoder": []}

    def encode(prompt):
        tokens = model.tokenizer.tokenize([prompt], pad_token_id=model.config.pad_token_id)
        feed = {"tokens": tokens.astype(np.int32),
                "positions": np.arange(tokens.shape[1], dtype=np.int32)[None]}
        records["text_encoder"].append(feed)
        return np.asarray(model.text_encoder.predict_on_batch(feed), np.float32)

    def unet(latent, embedding, context):
        feed = {"latent": latent, "timestep_embedding": embedding, "context": context}
        records["diffusion_model"].append({key: np.array(value, np.float32) for key, value in feed.items()})
        return np.asarray(model.diffusion_model.predict_on_batch(feed), np.float32)

    unconditional = encode("")
    extra_draws = scheduler.num_steps if scheduler.needs_noise else 0
    for index, prompt in enumerate(prompts):
        context = encode(prompt)
        initial, step_noise = noise_lib.latent_noise(seed + index, 1, latent_shape, extra_draws)
        latent = denoise(scheduler, unet, context, unconditional, initial * np.float32(scheduler.init_noise_sigma),
                         step_noise, guidance_scale=guidance_scale, timestep_dim=timestep_dim)
        records["decoder"].append({"latent": latent})
        decoded = np.asarray(model.decoder.predict_on_batch(latent), np.float32)
        records["image_encoder"].append({"image": np.clip(decoded, -1.0, 1.0)})
    for image in images or ():
        pixels = np.asarray(image, np.float32)[None, ..., :3] / 127.5 - 1.0
        records["image_encoder"].append({"image": pixels})
    return records


def save_records(records, path):
    """Write recorded feeds to one ``.npz`` (keys ``component/index/input``)."""
    arrays = {f"{component}/{index}/{name}": value
              for component, feeds in records.items() for index, feed in enumerate(feeds)
              for name, value in feed.items()}
    np.savez(path, **arrays)
    return path


def load_records(path):
    """Inverse of ``save_records``."""
    records = {}
    with np.load(path) as data:
        for key in data.files:
            component, index, name = key.split("/")
            feeds = records.setdefault(component, {})
            feeds.setdefault(int(index), {})[name] = data[key]
    return {component: [feeds[i] for i in sorted(feeds)] for component, feeds in records.items()}
