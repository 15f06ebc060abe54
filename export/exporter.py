"""``export_bundle``: a ``StableDiffusion`` or ``StableDiffusionXL`` to a verified LiteRT bundle folder
(``sd-keras export``; SDXL gives a format-version-2 bundle, ``export/BUNDLE.md``).

Records calibration trajectories, converts each component (``litert``, ``quantize``), writes the files and the
manifest (``bundle``), then runs the parity and quality gates (``verify``) before the folder is renamed into place.

Example:
    >>> from sd_keras import StableDiffusion                                  # doctest: +SKIP
    >>> sd = StableDiffusion.from_preset("tiny")                              # doctest: +SKIP
    >>> report = export_bundle(sd, "bundles/tiny-int8", quantization="int8")  # doctest: +SKIP
"""

import os
import shutil

from sd_keras import files
from sd_keras.errors import InputError
from sd_keras.export.bundle import (MANIFEST, REPORT, TOKENIZER_FILE, build_manifest, check_destination,
                                    replace_folder, sha256_file, write_json_atomic)


def _schedule_entry():
    from sd_keras.schedulers import NoiseSchedule

    schedule = NoiseSchedule()
    return {"num_train_timesteps": schedule.num_train_timesteps, "beta_start": schedule.beta_start,
            "beta_end": schedule.beta_end, "beta_schedule": "scaled_linear", "steps_offset": schedule.steps_offset}


def export_bundle(model, output_dir, *, quantization="fp32", image_size=None, image_encoder=True,
                  random_weights=None, calibration_prompts=None, calibration_steps=4, calibration_sampler="Euler a",
                  parity_samples=6, latency_runs=3, threads=2, end_to_end=True, max_part_bytes=None,
                  quality_gates=True, gate_prompts=None, gate_steps=None, gate_sampler=None, prompt_following=None,
                  evaluate_prompts=None, max_accuracy_drop=None, quality_reference=None, log=None):
    """Export ``model`` (a ``StableDiffusion``, or a ``StableDiffusionXL`` base model: a format-version-2 bundle
    with ``text_encoder_2`` and the UNet's ``added_embedding``) as a verified bundle folder ``output_dir``.

    Everything is written to a hidden staging folder next to ``output_dir`` and renamed into place only after
    every parity and quality gate passed (``report.json`` inside the bundle has the numbers); a failed gate raises
    ``ExportError``, removes the staging folder and leaves the report as ``<output_dir>.report.json``.

    Args:
        model: the source ``StableDiffusion``.
        output_dir: the bundle folder to create (an existing bundle there is replaced).
        quantization: one of ``quantize.MODES``, or a mode per component (``"unet=int8,text_encoder=fp16"``
            or a dict; see ``quantize.parse_spec``).
        image_size: (height, width), multiples of 64; default the model's native size.
        image_encoder: also export the VAE encoder (image-to-image on device).
        random_weights: whether the weights are random (quantized modes' image gates are then reported only);
            default: True for the random presets (``tiny``).
        calibration_prompts, calibration_steps, calibration_sampler: the recorded trajectories that give the
            int8-full representative dataset and the parity inputs.
        parity_samples: recorded inputs compared per component.
        latency_runs, threads: CPU latency measurement (LiteRT interpreter, XNNPACK).
        end_to_end: compare the bundle runner's image with the Keras pipeline's (True, False, or a dict of
            ``verify.end_to_end`` settings).
        max_part_bytes: UNets with more float32 weight bytes are written as parts (``litert.MAX_PART_BYTES``
            by default; 0 never splits): the converter needs several times a file's weights in memory.
        quality_gates: judge the bundle as a user meets it (``verify.quality_gates``): every component against
            Keras on all inputs of full-length trajectories of held-out prompts (mean SNR gated per mode, worst
            reported), plus prompt-following (``sd_keras.evaluate``, the shapes model) or CLIP-free image
            statistics (other models). A bundle failing an enforced gate is not written.
        gate_prompts: trajectories recorded for the quality gates (default ``verify.GATE_PROMPTS``, or
            ``verify.RANDOM_WEIGHTS_GATE_PROMPTS`` for random weights), or a list of prompts.
        gate_steps, gate_sampler: their length and sampler (default 20 steps of the deterministic
            ``verify.GATE_SAMPLER``).
        prompt_following: run the prompt-following gate (default: for the ``shapes`` model only).
        evaluate_prompts: ``(single, double)`` held-out prompts for prompt-following (default 24, 8).
        max_accuracy_drop: points (as a fraction) a bundle may lose against Keras on colour, shape or
            background accuracy (default ``verify.MAX_ACCURACY_DROP``, 0.05).
        quality_reference: a ``verify.quality_reference`` of this model computed earlier (several exports of
            one model measure Keras once); its settings replace the gate_* arguments.
        log: ``callable(str)`` for progress lines.

    Returns:
        The report dict (also ``output_dir/report.json``).

    Example:
        >>> sd = StableDiffusion.from_preset("tiny")                                   # doctest: +SKIP
        >>> report = export_bundle(sd, "bundles/tiny-int8", quantization="int8")       # doctest: +SKIP
        >>> report["passed"], report["components"]["diffusion_model"]["size_bytes"]    # doctest: +SKIP
    """
    import time

    from sd_keras import presets
    from sd_keras.export import litert, quantize, verify
    from sd_keras.pipeline import DEFAULT_SAMPLER, check_size
    from sd_keras.schedulers import SAMPLER_NAMES
    from sd_keras.tokenizer import CONTEXT_LENGTH, END_OF_TEXT_ID, START_OF_TEXT_ID
    from sd_keras.version import __version__

    started = time.perf_counter()
    user_log = log or (lambda message: None)

    def log(message):
        user_log(f"[{time.perf_counter() - started:6.1f}s] {message}")

    plan = quantize.parse_spec(quantization)
    config = model.config
    height, width = config.image_size if image_size is None else image_size
    check_size(height, width)
    if quality_reference is not None and quality_reference["image_size"] != [height, width]:
        raise InputError(f"quality_reference was measured at {quality_reference['image_size']}, the export is "
                         f"{[height, width]}")
    sdxl = litert.is_sdxl(config)
    if sdxl and (config.text_encoder is None or config.unet.num_time_ids != 6
                 or config.unet.in_channels != config.vae.latent_channels):
        raise InputError(f"model {config.name}: only SDXL base models export to a bundle (not the refiner or a "
                         f"9-channel inpainting UNet)")
    destination = check_destination(output_dir)
    if random_weights is None:
        from sd_keras.pipeline_sdxl import TINY_PRESETS

        random_weights = config.name in presets.RANDOM_PRESETS or config.name in TINY_PRESETS
    models = {"text_encoder": model.text_encoder, "diffusion_model": model.diffusion_model,
              "decoder": model.decoder}
    if sdxl:
        models = {"text_encoder": model.text_encoder, "text_encoder_2": model.text_encoder_2, **models}
    if image_encoder and getattr(model, "image_encoder", None) is not None:
        models["image_encoder"] = model.image_encoder
    quantization = quantize.spec_name(plan, tuple(models))
    staging = files.new_folder_beside(destination)
    try:
        log(f"recording {len(calibration_prompts or quantize.CALIBRATION_PROMPTS)} trajectories of "
            f"{calibration_steps} steps ({calibration_sampler}) at {width}x{height}")
        records = quantize.record_trajectories(
            model, prompts=calibration_prompts or quantize.CALIBRATION_PROMPTS, num_steps=calibration_steps,
            sampler=calibration_sampler, image_size=(height, width))
        log(f"converting {', '.join(models)} ({quantization})")
        converted = litert.export_components(models, config, (height, width), plan, staging,
                                             representative=records, max_part_bytes=max_part_bytes)
        export_seconds = time.perf_counter() - started
        log("converted")
        merges = model.tokenizer.save_merges(os.path.join(staging, TOKENIZER_FILE))
        signatures = litert.component_signatures(config, (height, width))
        components = {}
        for name in models:
            if "parts" in converted[name]:
                parts = [{"file": part["file"], "sha256": sha256_file(os.path.join(staging, part["file"])),
                          **{key: part[key] for key in ("signature", "inputs", "outputs", "steps",
                                                          "large_model_layout")}}
                         for part in converted[name]["parts"]]
                components[name] = {"parts": parts, "quantization": plan[name], **signatures[name],
                                    "large_model_layout": converted[name]["large_model_layout"]}
                continue
            path = os.path.join(staging, converted[name]["file"])
            components[name] = {"file": converted[name]["file"], "sha256": sha256_file(path),
                                "quantization": plan[name], **signatures[name],
                                "large_model_layout": converted[name]["large_model_layout"]}
            for fact in ("integer_only", "float_ops", "activations", "int8_activations_psnr_db",
                         "int16_activations_psnr_db"):
                if converted[name].get(fact) is not None:
                    components[name][fact] = converted[name][fact]
        factor = config.vae.downsample_factor
        token_spec = {"file": os.path.basename(merges), "sha256": sha256_file(merges),
                      "context_length": CONTEXT_LENGTH, "start_id": START_OF_TEXT_ID, "end_id": END_OF_TEXT_ID,
                      "pad_id": config.pad_token_id}
        extra = None
        if sdxl:
            extra = {"tokenizer_2": dict(token_spec, pad_id=config.pad_token_ids[1]),
                     "pooled_dim": config.unet.pooled_dim,
                     "addition_time_embed_dim": config.unet.addition_time_embed_dim,
                     "micro_conditioning": {"original_size": [height, width], "crops_coords_top_left": [0, 0],
                                            "target_size": [height, width]},
                     "force_zeros_for_empty_prompt": config.force_zeros_for_empty_prompt}
        manifest = build_manifest(
            model=config.name, image_size=(height, width),
            latent_size=(height // factor, width // factor, config.vae.latent_channels),
            latent_scale_factor=config.vae.scaling_factor, prediction_type=config.prediction_type,
            schedule=_schedule_entry(), default_sampler=model.default_sampler if sdxl else DEFAULT_SAMPLER,
            samplers=SAMPLER_NAMES, timestep_embedding_dim=config.unet.timestep_dim, tokenizer=token_spec,
            components=components, quantization=quantization, model_config=config.to_dict(),
            producer={"name": "sd_keras", "version": __version__}, sdxl=extra)
        write_json_atomic(os.path.join(staging, MANIFEST), manifest)
        log("checking parity with the Keras model")
        settings = None
        if end_to_end:
            settings = {"prompt": "a red circle on a white background", "seed": 42, "sampler": DEFAULT_SAMPLER,
                        "num_steps": 4, "guidance_scale": 7.5}
            if isinstance(end_to_end, dict):
                settings.update(end_to_end)
        report = verify.evaluate(model, staging, manifest, records, plan, random_weights=random_weights,
                                 threads=threads, latency_runs=latency_runs, max_samples=parity_samples,
                                 end_to_end_settings=settings)
        report["export_seconds"] = round(export_seconds, 2)
        report["calibration"] = {"prompts": len(calibration_prompts or quantize.CALIBRATION_PROMPTS),
                                 "steps": calibration_steps, "sampler": calibration_sampler,
                                 "unet_samples": len(records["diffusion_model"])}
        if report["passed"] and quality_gates:
            reference = quality_reference
            if reference is None:
                if prompt_following is None:
                    prompt_following = config.name == "shapes"
                count = gate_prompts if gate_prompts is not None else (
                    verify.RANDOM_WEIGHTS_GATE_PROMPTS if random_weights else verify.GATE_PROMPTS)
                reference = verify.quality_reference(
                    model, prompts=count, num_steps=gate_steps or verify.GATE_STEPS,
                    sampler=gate_sampler or verify.GATE_SAMPLER, image_size=(height, width),
                    evaluate_prompts=(evaluate_prompts or (verify.EVALUATE_SINGLE, verify.EVALUATE_DOUBLE))
                    if prompt_following else None, log=log)
            quality = verify.quality_gates(
                staging, plan, reference, random_weights=random_weights, threads=threads, log=log,
                max_accuracy_drop=verify.MAX_ACCURACY_DROP if max_accuracy_drop is None else max_accuracy_drop)
            report["quality"] = quality
            report["failures"] += quality["failures"]
            report["passed"] = not report["failures"]
            manifest["quality_gates"] = verify.quality_summary(quality)
            write_json_atomic(os.path.join(staging, MANIFEST), manifest)
        if not report["passed"]:
            failed_report = write_json_atomic(f"{destination}.report.json", report)
            kind = "quality" if report.get("quality", {}).get("failures") else "parity"
            raise litert.ExportError(f"{kind} gate failed for {config.name} ({quantization}), bundle not written: "
                                     f"{'; '.join(report['failures'])}; report: {failed_report}")
        write_json_atomic(os.path.join(staging, REPORT), report)
        replace_folder(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"wrote {destination}")
    return report
