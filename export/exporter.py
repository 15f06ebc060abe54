"""``export_bundle``: a ``StableDiffusion`` or ``StableDiffusionXL`` to a verified LiteRT bundle folder
(``sd-keras export``; SDXL gives a format-version-2 bundle, ``export/BUNDLE.md``).

Records calibration trajectories, converts each component (``litert``, ``quantize``), writes the files and the
manifest (``bundle``), then runs the parity and quality gates (``verify``) before the folder is renamed into place.
Everything the gates compare with is taken from the Keras model before the bundle is checked
(``_keras_side``). Given a model spec instead of a model, all that needs the model runs in a worker process that
exits before any converter starts; the converters and the gates then run while no process holds the model.

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
                  parity_samples=6, latency_runs=3, threads=2, check_workers=1, end_to_end=True, max_part_bytes=None,
                  quality_gates=True, gate_prompts=None, gate_steps=None, gate_sampler=None, prompt_following=None,
                  evaluate_prompts=None, max_accuracy_drop=None, quality_reference=None, log=None):
    """Export ``model`` (a ``StableDiffusion``, or a ``StableDiffusionXL`` base model: a format-version-2 bundle
    with ``text_encoder_2`` and the UNet's ``added_embedding``) as a verified bundle folder ``output_dir``.

    Everything is written to a hidden staging folder next to ``output_dir`` and renamed into place only after
    every parity and quality gate passed (``report.json`` inside the bundle has the numbers); a failed gate raises
    ``ExportError``, removes the staging folder and leaves the report as ``<output_dir>.report.json``.

    Args:
        model: the source ``StableDiffusion`` / ``StableDiffusionXL``, or a model spec (a preset name, checkpoint
            file or folder, as ``sd_keras.load`` takes): then the model is loaded in a worker process that records
            the calibration trajectories, writes the converters' inputs, takes the gates' Keras references and
            exits before any converter runs, so neither the converters nor the bundle's checks share the machine
            with the model (what lets an SDXL base model export at 1024x1024 on a 24 GB machine; ``sd-keras
            export`` does this for large models, ``exports_in_workers``).
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
        latency_runs, threads: CPU latency measurement (LiteRT interpreter, XNNPACK); ``latency_runs=0`` times
            only the parity check's own calls (``verify.evaluate``).
        check_workers: components whose parity checks run side by side (``verify.evaluate``): 2 halves the
            check of int16-activation (w8a16) bundles on two cores, whose reference kernels use one core each.
        end_to_end: compare the bundle runner's image with the Keras pipeline's (True, False, or a dict of
            ``prompt``, ``seed``, ``sampler``, ``num_steps``, ``guidance_scale``).
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
    settings = dict(quantization=quantization, image_size=image_size, image_encoder=image_encoder,
                    random_weights=random_weights, calibration_prompts=calibration_prompts,
                    calibration_steps=calibration_steps, calibration_sampler=calibration_sampler,
                    parity_samples=parity_samples, latency_runs=latency_runs, threads=threads,
                    check_workers=check_workers, end_to_end=end_to_end, max_part_bytes=max_part_bytes,
                    quality_gates=quality_gates, gate_prompts=gate_prompts,
                    gate_steps=gate_steps, gate_sampler=gate_sampler, prompt_following=prompt_following,
                    evaluate_prompts=evaluate_prompts, max_accuracy_drop=max_accuracy_drop,
                    quality_reference=quality_reference)
    if latency_runs < 0 or check_workers < 1:
        raise InputError(f"latency_runs must be 0 or more and check_workers 1 or more, got {latency_runs} and "
                         f"{check_workers}")
    log = _timed(log)
    destination = check_destination(output_dir)
    if isinstance(model, (str, os.PathLike)):
        return _export_in_workers(os.fspath(model), destination, settings, log)
    from sd_keras.export import litert

    plan = _check(model, settings)
    staging = files.new_folder_beside(destination)
    try:
        models, records = _record(model, plan, settings, log)
        log(f"converting {', '.join(models)} ({_plan_name(plan, models)})")
        converted = litert.export_components(models, model.config, _size(model, settings), plan, staging,
                                             representative=records, max_part_bytes=max_part_bytes)
        settings["export_seconds"] = log.elapsed()
        log("converted")
        source = _keras_side(model, records, settings, staging, log)
        report = _finish(source, staging, destination, converted, records, plan, settings, log)
        replace_folder(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"wrote {destination}")
    return report


def _timed(log):
    import time

    started = time.perf_counter()
    user_log = log or (lambda message: None)

    def timed(message):
        user_log(f"[{time.perf_counter() - started:6.1f}s] {message}")
    timed.elapsed = lambda: time.perf_counter() - started
    return timed


def _size(model, settings):
    height, width = model.config.image_size if settings["image_size"] is None else settings["image_size"]
    return int(height), int(width)


def _components(model, settings):
    """``{component: Keras model}`` that go into the bundle."""
    from sd_keras.export import litert

    models = {"text_encoder": model.text_encoder, "diffusion_model": model.diffusion_model,
              "decoder": model.decoder}
    if litert.is_sdxl(model.config):
        models = {"text_encoder": model.text_encoder, "text_encoder_2": model.text_encoder_2, **models}
    if settings["image_encoder"] and getattr(model, "image_encoder", None) is not None:
        models["image_encoder"] = model.image_encoder
    return models


def _plan_name(plan, models):
    from sd_keras.export import quantize

    return quantize.spec_name(plan, tuple(models))


def _check(model, settings):
    """The quantization plan, after the checks that need only the model's configuration."""
    from sd_keras.export import litert, quantize
    from sd_keras.pipeline import check_size

    plan = quantize.parse_spec(settings["quantization"])
    config = model.config
    height, width = _size(model, settings)
    check_size(height, width)
    reference = settings["quality_reference"]
    if reference is not None and reference["image_size"] != [height, width]:
        raise InputError(f"quality_reference was measured at {reference['image_size']}, the export is "
                         f"{[height, width]}")
    if litert.is_sdxl(config) and (config.text_encoder is None or config.unet.num_time_ids != 6
                                   or config.unet.in_channels != config.vae.latent_channels):
        raise InputError(f"model {config.name}: only SDXL base models export to a bundle (not the refiner or a "
                         f"9-channel inpainting UNet)")
    return plan


def _random_weights(model, settings):
    from sd_keras import presets
    from sd_keras.pipeline_sdxl import TINY_PRESETS

    if settings["random_weights"] is not None:
        return settings["random_weights"]
    return model.config.name in presets.RANDOM_PRESETS or model.config.name in TINY_PRESETS


def _record(model, plan, settings, log):
    """The components to convert and the recorded calibration trajectories."""
    from sd_keras.export import quantize

    height, width = _size(model, settings)
    prompts = settings["calibration_prompts"] or quantize.CALIBRATION_PROMPTS
    log(f"recording {len(prompts)} trajectories of {settings['calibration_steps']} steps "
        f"({settings['calibration_sampler']}) at {width}x{height}")
    records = quantize.record_trajectories(
        model, prompts=prompts, num_steps=settings["calibration_steps"], sampler=settings["calibration_sampler"],
        image_size=(height, width))
    return _components(model, settings), records


def _keras_side(model, records, settings, staging, log):
    """Everything the manifest and the gates need from the Keras model, taken before the model is let go: the
    configuration, the tokenizer file (written into ``staging``), the Keras outputs the parity checks compare
    with (``verify.keras_references``) and the quality gates' reference (``verify.quality_reference``)."""
    from sd_keras.export import litert, verify
    from sd_keras.pipeline import DEFAULT_SAMPLER

    config = model.config
    height, width = _size(model, settings)
    random_weights = _random_weights(model, settings)
    log("computing the Keras references of the parity checks")
    components = list(_components(model, settings))
    signatures = litert.component_signatures(config, (height, width))
    checked = {name: signatures[name] for name in components}
    references = verify.keras_references(model, checked, records, max_samples=settings["parity_samples"],
                                         end_to_end_settings=_image_settings(settings), image_size=(height, width))
    reference = settings["quality_reference"]
    if settings["quality_gates"] and reference is None:
        prompt_following = settings["prompt_following"]
        if prompt_following is None:
            prompt_following = config.name == "shapes"
        count = settings["gate_prompts"] if settings["gate_prompts"] is not None else (
            verify.RANDOM_WEIGHTS_GATE_PROMPTS if random_weights else verify.GATE_PROMPTS)
        reference = verify.quality_reference(
            model, prompts=count, num_steps=settings["gate_steps"] or verify.GATE_STEPS,
            sampler=settings["gate_sampler"] or verify.GATE_SAMPLER, image_size=(height, width),
            evaluate_prompts=(settings["evaluate_prompts"] or (verify.EVALUATE_SINGLE, verify.EVALUATE_DOUBLE))
            if prompt_following else None, log=log)
    return {"config": config, "image_size": (height, width), "components": components,
            "random_weights": random_weights, "merges": model.tokenizer.save_merges(os.path.join(staging,
                                                                                                TOKENIZER_FILE)),
            "default_sampler": model.default_sampler if litert.is_sdxl(config) else DEFAULT_SAMPLER,
            "references": references, "quality_reference": reference if settings["quality_gates"] else None}


def _image_settings(settings):
    """The end-to-end image comparison's settings (None: not compared)."""
    from sd_keras.pipeline import DEFAULT_SAMPLER

    end_to_end = settings["end_to_end"]
    if not end_to_end:
        return None
    image_settings = {"prompt": "a red circle on a white background", "seed": 42, "sampler": DEFAULT_SAMPLER,
                      "num_steps": 4, "guidance_scale": 7.5}
    if isinstance(end_to_end, dict):
        image_settings.update(end_to_end)
    return image_settings


def _finish(source, staging, destination, converted, records, plan, settings, log):
    """Write the manifest into ``staging`` and run the parity and quality gates against ``source`` (what
    ``_keras_side`` took from the model: no Keras model is needed here); the report (``report.json`` in
    ``staging``). ExportError when a gate fails (its report beside ``destination``)."""
    from sd_keras.export import litert, quantize, verify
    from sd_keras.schedulers import SAMPLER_NAMES
    from sd_keras.tokenizer import CONTEXT_LENGTH, END_OF_TEXT_ID, START_OF_TEXT_ID
    from sd_keras.version import __version__

    config = source["config"]
    height, width = source["image_size"]
    sdxl = litert.is_sdxl(config)
    models = source["components"]
    quantization = _plan_name(plan, models)
    random_weights = source["random_weights"]
    merges = source["merges"]
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
        for fact in quantize.FILE_FACTS:
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
        schedule=_schedule_entry(), default_sampler=source["default_sampler"],
        samplers=SAMPLER_NAMES, timestep_embedding_dim=config.unet.timestep_dim, tokenizer=token_spec,
        components=components, quantization=quantization, model_config=config.to_dict(),
        producer={"name": "sd_keras", "version": __version__}, sdxl=extra)
    write_json_atomic(os.path.join(staging, MANIFEST), manifest)
    log("checking parity with the Keras model")
    report = verify.evaluate(None, staging, manifest, records, plan, random_weights=random_weights,
                             threads=settings["threads"], latency_runs=settings["latency_runs"],
                             check_workers=settings["check_workers"],
                             max_samples=settings["parity_samples"], end_to_end_settings=_image_settings(settings),
                             references=source["references"])
    report["export_seconds"] = round(settings.get("export_seconds", 0.0), 2)
    calibration_prompts = settings["calibration_prompts"] or quantize.CALIBRATION_PROMPTS
    report["calibration"] = {"prompts": len(calibration_prompts), "steps": settings["calibration_steps"],
                             "sampler": settings["calibration_sampler"],
                             "unet_samples": len(records["diffusion_model"])}
    if report["passed"] and source["quality_reference"] is not None:
        max_accuracy_drop = settings["max_accuracy_drop"]
        quality = verify.quality_gates(
            staging, plan, source["quality_reference"], random_weights=random_weights, threads=settings["threads"],
            log=log, max_accuracy_drop=verify.MAX_ACCURACY_DROP if max_accuracy_drop is None else max_accuracy_drop)
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
    return report


# -- a model spec: the model in a worker process that exits before any converter runs -------------------------
# The Keras model is needed to record the calibration trajectories, write the converters' SavedModels and compute
# what the gates compare with (the parity outputs, the end-to-end image, the quality reference). For a spec all of
# that runs in one worker process, which then exits: the converters and the gates run in this process, which never
# holds the model. An SDXL base model (13.9 GB of float32 weights, 17-22 GB resident while sampling at 1024x1024)
# next to a converter of its 2.8 GB second text encoder (10.3 GB) or next to the interpreters of its bundle does not
# fit 24 GB.
WORKER_STAGES = ("prepare",)


def _export_in_workers(spec, destination, settings, log):
    from sd_keras import paths
    from sd_keras.export import litert

    if paths.is_bundle_folder(spec):
        raise InputError(f"{spec} is already an exported bundle; export from a preset or checkpoint")
    staging = files.new_folder_beside(destination)
    workdir = files.new_folder_beside(destination)  # the SavedModels: the bundle's file system, not /tmp's
    try:
        job = {"spec": spec, "destination": destination, "staging": staging, "workdir": workdir,
               "settings": settings}
        prepared = _run_worker("prepare", job, log)
        tasks = []
        for task in prepared["tasks"]:
            log(f"converting {task['job']['component']} ({task['mode']})")
            tasks.append(litert.run_task(task))
            shutil.rmtree(task["job"]["saved_model"], ignore_errors=True)
        settings = dict(settings, export_seconds=log.elapsed())
        log("converted")
        report = _finish(prepared["source"], staging, destination, litert.collect_results(tasks),
                         prepared["records"], prepared["plan"], settings, log)
        replace_folder(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"wrote {destination}")
    return report


def _run_worker(stage, job, log):
    """Run ``python -m sd_keras.export_worker STAGE JOB`` (TensorFlow backend), its lines to ``log``; the
    stage's result (a dict). An InputError, ExportError or RuntimeError in the worker is raised here with its
    message."""
    import pickle
    import subprocess
    import sys
    import tempfile

    from sd_keras.export.bundle import ExportError

    job_path = os.path.join(job["workdir"], f"{stage}.job.pkl")
    result_path = os.path.join(job["workdir"], f"{stage}.result.pkl")
    with open(job_path, "wb") as handle:
        pickle.dump(dict(job, result=result_path), handle)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    with tempfile.TemporaryFile(mode="w+") as errors:
        process = subprocess.Popen([sys.executable, "-m", "sd_keras.export_worker", stage, job_path], env=env,
                                   stdout=subprocess.PIPE, stderr=errors, text=True)
        for line in process.stdout:
            log(f"{stage}: {line.rstrip()}")
        process.wait()
        errors.seek(0)
        tail = "\n".join(errors.read().strip().splitlines()[-15:])
    if process.returncode != 0 or not os.path.exists(result_path):
        killed = " (killed: out of memory?)" if process.returncode < 0 else ""
        raise ExportError(f"the export's {stage} worker failed (exit {process.returncode}){killed}:\n{tail}")
    with open(result_path, "rb") as handle:
        result = pickle.load(handle)
    if "error" in result:
        raise {"input": InputError, "export": ExportError, "runtime": RuntimeError}[result["type"]](result["error"])
    return result


def run_worker_job(stage, job_path, load):
    """The worker's work (``python -m sd_keras.export_worker``): load the model from its spec with ``load``
    (``sd_keras.loading.load``); record, write the converters' SavedModels and take what the gates need from the
    model (the job's result file: the tasks, the records, ``_keras_side``'s references and the plan); the process
    then exits, freeing the model before any converter runs."""
    import pickle

    from sd_keras.export import litert, verify
    from sd_keras.export.bundle import ExportError

    with open(job_path, "rb") as handle:
        job = pickle.load(handle)
    settings, staging, workdir = job["settings"], job["staging"], job["workdir"]

    def log(message):
        print(message, flush=True)

    try:
        log(f"loading {job['spec']}")
        model = load(job["spec"])
        plan = _check(model, settings)
        models, records = _record(model, plan, settings, log)
        models = {name: litert._float32_model(graph, model.config, name) for name, graph in models.items()}
        graphs = verify.export_graphs(models)
        tasks = []
        for task in litert.prepare_components(models, model.config, _size(model, settings), plan, staging, records,
                                              list(models), workdir, max_part_bytes=settings["max_part_bytes"]):
            if litert.needs_widening_check(task):
                task["widening_references"] = litert.widening_references(task, graphs[task["component"]])
            log(f"prepared {task['job']['component']}")
            tasks.append(task)
        result = {"tasks": tasks, "records": records, "plan": plan,
                  "source": _keras_side(model, records, settings, staging, log)}
    except (ExportError, InputError, RuntimeError) as error:  # RuntimeError: e.g. weights not downloadable
        kind = "input" if isinstance(error, InputError) else "export" if isinstance(error, ExportError) else "runtime"
        result = {"error": str(error), "type": kind}
    with open(job["result"], "wb") as handle:
        pickle.dump(result, handle)
