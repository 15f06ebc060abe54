"""Per-component LiteRT (``.tflite``) export with fixed input shapes and named signatures.

Each Keras sub-model is wrapped in a function whose arguments are the component's input names and which returns
a dict keyed by its output name; ``tf.saved_model.save`` writes that function as a SavedModel signature and
``tf.lite.TFLiteConverter.from_saved_model`` converts it (the path Keras 3's ``model.export(format="litert")``
takes, with the converter options in our hands and each weight stored once). Only builtin ops are allowed: a
graph that would need the TensorFlow (Flex) delegate fails at export time with the names of the ops.

Models over 2 GB: a flatbuffer cannot address more than 2 GB, so the converter is switched to its large-model
layout (``_experimental_use_buffer_offset``): constant buffers are appended after the flatbuffer and
referenced by offset. The LiteRT interpreter reads such files directly. It is set where the weights would pass
90 % of 2 GB (the fp32 SD 1.x UNet is 3.4 GB); smaller files keep the plain layout. TensorFlow 2.21's converter
also switches by itself once its module passes 2 GB (it logs "Module size is greater than 2GB"); setting the
flag from our own estimate keeps the layout independent of that heuristic.

Converting needs memory: the converter peaks at several times a model's float32 weight bytes (a 2.15 GB
single-layer model peaked at 16 GB resident; the 3.4 GB SD 1.x UNet did not convert in 16 GB). So models over
1 GiB of weights are converted in a child process that reads only the SavedModel (``isolate``), and a UNet over
``MAX_PART_BYTES`` is written as consecutive parts (``unet_parts``), each converted in its own process: SD 1.x
at int8 then exports on a 24 GB machine.

Exporting needs TensorFlow. Under another Keras backend ``export_components`` saves the weights to a temporary
folder and runs this module in a ``KERAS_BACKEND=tensorflow`` subprocess (``python -m
sd_keras.export.litert JOB.json``).

Example:
    >>> from sd_keras.config import get_config
    >>> signatures = component_signatures(get_config("tiny"), (64, 64))
    >>> [spec["name"] for spec in signatures["diffusion_model"]["inputs"]]
    ['latent', 'timestep_embedding', 'context']
"""

import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback

import numpy as np

from sd_keras import backend, files
from sd_keras.export import quantize
from sd_keras.export.bundle import ExportError  # noqa: F401  (raised here; litert.ExportError for callers)
from sd_keras.export.verify import ENCODER_2_OUTPUTS, export_graphs  # noqa: F401  (litert.export_graphs for callers)

COMPONENTS = ("text_encoder", "text_encoder_2", "diffusion_model", "decoder", "image_encoder")
OUTPUT_NAMES = {"text_encoder": "context", "text_encoder_2": "context", "diffusion_model": "model_output",
                "decoder": "image", "image_encoder": "latent"}
FLATBUFFER_LIMIT = 2**31 - 1
# Bytes per weight the converter writes for each mode (int8-full keeps int32 biases: close to int8).
_BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int8-full": 1.0, "w8a16": 4.0, "int4": 4.0}
_LARGE_MODEL_MARGIN = 0.9  # switch layouts a little before the limit: the graph itself takes space too
ISOLATE_BYTES = 2**30  # convert models with more float32 weight bytes than this in a child process
MAX_PART_BYTES = 2**30  # a UNet with more float32 weight bytes is exported as parts of at most this size


def _spec(name, shape, dtype="float32"):
    return {"name": name, "shape": [int(v) for v in shape], "dtype": dtype}


def is_sdxl(config):
    """True for an SDXL configuration (two text encoders, added conditioning: a version-2 bundle)."""
    return hasattr(config, "text_encoder_2")


def config_from_dict(data):
    """``ModelConfig`` or, for an SDXL family, ``SDXLConfig`` from ``to_dict``'s output."""
    if str(data.get("family", "")).startswith("sdxl"):
        from sd_keras.config_sdxl import sdxl_config_from_dict

        return sdxl_config_from_dict(data)
    from sd_keras.config import ModelConfig

    return ModelConfig.from_dict(data)


def component_signatures(config, image_size, *, unet_batch=2):
    """Input and output specs of every component for ``image_size`` = (height, width).

    Returns:
        ``{component: {"signature": name, "inputs": [spec, ...], "outputs": [spec]}}`` with specs
        ``{"name", "shape", "dtype"}`` in the manifest's form.
    """
    height, width = (int(v) for v in image_size)
    factor = config.vae.downsample_factor
    latent = (height // factor, width // factor, config.vae.latent_channels)
    sdxl = is_sdxl(config)
    first = config.text_encoder if config.text_encoder is not None else config.text_encoder_2
    length, width_text = first.max_length, first.width
    unet_in = (height // factor, width // factor, config.unet.in_channels)
    unet_out = (height // factor, width // factor, config.unet.out_channels)
    signatures = {
        "text_encoder": ([_spec("tokens", (1, length), "int32"), _spec("positions", (1, length), "int32")],
                         [_spec("context", (1, length, width_text))]),
        "diffusion_model": ([_spec("latent", (unet_batch,) + unet_in),
                             _spec("timestep_embedding", (unet_batch, config.unet.timestep_dim)),
                             _spec("context", (unet_batch, length, config.unet.context_dim))],
                            [_spec("model_output", (unet_batch,) + unet_out)]),
        "decoder": ([_spec("latent", (1,) + latent)], [_spec("image", (1, height, width, 3))]),
        "image_encoder": ([_spec("image", (1, height, width, config.vae.image_channels))],
                          [_spec("latent", (1,) + latent)]),
    }
    if sdxl:
        encoder_2 = config.text_encoder_2
        signatures["text_encoder_2"] = (
            [_spec("tokens", (1, encoder_2.max_length), "int32"), _spec("positions", (1, encoder_2.max_length),
                                                                      "int32")],
            [_spec("context", (1, encoder_2.max_length, encoder_2.width)),
             _spec("pooled", (1, encoder_2.projection_dim))])
        signatures["diffusion_model"][0].append(_spec("added_embedding", (unet_batch,
                                                                          config.unet.addition_input_dim)))
        if config.text_encoder is None:  # the refiner: one encoder
            del signatures["text_encoder"]
    return {name: {"signature": name, "inputs": inputs, "outputs": outputs}
            for name, (inputs, outputs) in signatures.items()}


def _serving_function(model, component):
    """A function with the component's input names as arguments, returning ``{output_name: tensor}``."""
    output = OUTPUT_NAMES[component]
    if component in ("text_encoder", "text_encoder_2"):
        def serve(tokens, positions):
            out = model({"tokens": tokens, "positions": positions}, training=False)
            if isinstance(out, dict):  # SDXL's second encoder: penultimate hidden states and pooled output
                return {name: out[key] for name, key in ENCODER_2_OUTPUTS.items()}
            return {output: out}
    elif component == "diffusion_model" and getattr(model, "sd_keras_export_of", None) is not None:
        def serve(latent, timestep_embedding, context, added_embedding):
            inputs = {"latent": latent, "timestep_embedding": timestep_embedding, "context": context,
                      "added_embedding": added_embedding}
            return {output: model(inputs, training=False)}
    elif component == "diffusion_model":
        def serve(latent, timestep_embedding, context):
            inputs = {"latent": latent, "timestep_embedding": timestep_embedding, "context": context}
            return {output: model(inputs, training=False)}
    elif component == "decoder":
        def serve(latent):
            return {output: model(latent, training=False)}
    elif component == "image_encoder":
        def serve(image):
            return {output: model(image, training=False)}
    else:
        raise ValueError(f"unknown component {component!r}; known: {', '.join(COMPONENTS)}")
    return serve


def weight_bytes(model):
    """float32 bytes of the model's weights."""
    return int(sum(int(np.prod(weight.shape)) for weight in model.weights) * 4)


def release_freed_memory():
    """Give the C heap's freed pages back to the system (glibc ``malloc_trim``; nothing elsewhere).

    Sampling at a large size leaves gigabytes of freed activation buffers in this process's heap, counted in its
    resident memory while a converter process needs the machine's memory."""
    import ctypes
    import ctypes.util

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _flex_ops(message):
    names = set(re.findall(r"\btf\.([A-Z]\w*)", message))
    names |= set(re.findall(r"'tf\.([A-Z]\w*)'", message))
    return sorted(names)


def convert_component(model, component, signature, mode, path, *, representative=None, isolate=None,
                      activations="int8"):
    """Convert one Keras sub-model to ``path`` (TensorFlow backend; written atomically).

    Args:
        model: the Keras model (KerasCV signature).
        component: one of ``COMPONENTS``.
        signature: that component's entry of ``component_signatures``.
        mode: a quantization mode (``int4`` and ``w8a16`` files are made from the converter's fp32 file by the
            process that converts it).
        representative: ``int8-full`` and ``w8a16`` calibration feeds (list of dicts).
        isolate: run the converter in a child process that holds only the SavedModel (not this process's
            Keras models), so its peak memory adds to a small parent. Default: for weights over
            ``ISOLATE_BYTES`` (the converter peaks at several times the weight bytes).
        activations: ``int8-full`` only: ``"int8"`` or ``"int16"`` activations.

    Returns:
        A dict of facts for the report: ``{"large_model_layout": bool, "integer_only": bool | None,
        "activations": "int8" | "int16" | None}``.
    """
    return convert_function(_serving_function(model, component), model.weights, component, signature, mode, path,
                            representative=representative, isolate=isolate, activations=activations)


def convert_function(serve, weights, component, signature, mode, path, *, representative=None, isolate=None,
                     activations="int8"):
    """``convert_component`` for any function of tensors: ``serve`` takes the signature's inputs by name and
    returns ``{output name: tensor}``; ``weights`` are the Keras variables it uses; ``component`` names it in
    messages (a component, or a part of one)."""
    with tempfile.TemporaryDirectory(prefix="sd_keras_savedmodel_") as workdir:
        job = prepare_function(serve, weights, component, signature, mode, path, workdir,
                               representative=representative, activations=activations)
        return run_job(job, isolate=isolate)


def prepare_function(serve, weights, component, signature, mode, path, workdir, *, representative=None,
                     activations="int8"):
    """The first half of ``convert_function``: write ``serve`` with its weights as a SavedModel (and the
    representative feeds) into the existing folder ``workdir``; return the converter job (a JSON-able dict) that
    ``run_job`` converts to ``path``, in this process or another one: the job needs no Keras model, so a process
    that prepared every job may exit before the converters run (``export_bundle`` on a model spec does that)."""
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise ExportError("converting needs KERAS_BACKEND=tensorflow; use export_components")
    quantization = quantize.check_mode(mode)
    mode = quantize.converter_mode(quantization)
    specs = [tf.TensorSpec(spec["shape"], spec["dtype"], name=spec["name"]) for spec in signature["inputs"]]
    size = int(sum(int(np.prod(weight.shape)) for weight in weights) * 4)
    large = size * _BYTES_PER_WEIGHT[mode] / 4.0 > _LARGE_MODEL_MARGIN * FLATBUFFER_LIMIT
    feeds = None
    if representative is not None:
        feeds = [{spec["name"]: np.asarray(feed[spec["name"]], spec["dtype"]) for spec in signature["inputs"]}
                 for feed in representative]
    if quantize.needs_representative_data(mode) and not feeds:
        raise ExportError(f"{component}: {mode} needs representative data (recorded sampling trajectories)")
    saved_model = os.path.join(workdir, "saved_model")
    # A plain tf.Module holding each tf.Variable once: Keras 3.15's ExportArchive writes every variable twice
    # ("variables" and "_all_variables"), which doubles the SavedModel and the converter's memory.
    module = tf.Module()
    module.model_variables = [variable.value for variable in weights]
    module.serve = tf.function(serve, input_signature=specs)
    with backend.native_convolutions():  # CONV_2D operators for LiteRT, whatever runs fastest on this CPU
        tf.saved_model.save(module, saved_model,
                            signatures={signature["signature"]: module.serve.get_concrete_function()})
    del module
    job = {"saved_model": saved_model, "signature": signature["signature"], "component": component,
           "mode": mode, "large": bool(large), "path": path, "representative": None, "activations": activations,
           "weight_bytes": size, "workdir": workdir,
           # modes made from the converter's fp32 file, by the process that converts it (their tools hold
           # several times the file, and all intermediate tensors while calibrating, in memory)
           "finish": quantization if quantization in ("w8a16", "int4") else None}
    if feeds is not None:
        job["representative"] = quantize.save_records({"feeds": feeds},
                                                      os.path.join(workdir, "representative.npz"))
    return job


def run_job(job, *, isolate=None):
    """Convert a ``prepare_function`` job; its report facts (see ``convert_component``). ``isolate``: in a child
    process (default: for weights over ``ISOLATE_BYTES``)."""
    if isolate is None:
        isolate = job["weight_bytes"] > ISOLATE_BYTES
    if not isolate:
        feeds = quantize.load_records(job["representative"])["feeds"] if job["representative"] else None
        return convert_saved_model(job, feeds)
    job_path = os.path.join(job["workdir"], "convert.json")
    job = dict(job, result=os.path.join(job["workdir"], "result.json"))
    release_freed_memory()
    with open(job_path, "w") as handle:
        json.dump(job, handle)
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.run([sys.executable, "-m", "sd_keras.export.litert", "--convert", job_path],
                             env=env, capture_output=True, text=True)
    component = job["component"]
    if process.returncode != 0 or not os.path.exists(job["result"]):
        tail = "\n".join(process.stderr.strip().splitlines()[-15:])
        killed = " (killed: out of memory?)" if process.returncode < 0 else ""
        raise ExportError(f"{component}: the converter process failed (exit {process.returncode}){killed}:"
                          f"\n{tail}")
    with open(job["result"]) as handle:
        result = json.load(handle)
    if "error" in result:
        raise ExportError(result["error"])
    return result["facts"]


def convert_saved_model(job, feeds=None):
    """Run the TFLite converter on a SavedModel signature and write ``job["path"]`` atomically.

    ``job`` holds ``saved_model``, ``signature``, ``component``, ``mode`` (a converter mode), ``large`` (use the
    >2 GB layout) and ``path``. Returns the report facts of ``convert_component``.
    """
    import tensorflow as tf

    component, mode = job["component"], job["mode"]

    def converter():
        made = tf.lite.TFLiteConverter.from_saved_model(job["saved_model"], signature_keys=[job["signature"]])
        gc.collect()  # from_saved_model loads the whole model to read its signatures; free it before converting
        return made

    facts = {"large_model_layout": bool(job["large"]), "integer_only": None, "activations": None}
    attempts = [True, False] if mode == "int8-full" else [True]
    for integer_only in attempts:
        conv = quantize.configure_converter(converter(), mode, feeds, integer_only=integer_only,
                                            activations=job.get("activations", "int8"))
        if job["large"]:
            conv._experimental_use_buffer_offset = True  # the >2 GB layout (see the module docstring)
        try:
            data = conv.convert()
            break
        except Exception as error:  # ConverterError: report Flex ops by name, retry int8 with float kernels
            message = str(error)
            if integer_only and mode == "int8-full" and len(attempts) > 1:
                continue
            flex = _flex_ops(message)
            if flex:
                raise ExportError(f"{component}: the model needs TensorFlow ops that LiteRT has no builtin "
                                  f"kernel for: {', '.join(flex)}") from None
            raise ExportError(f"{component}: conversion failed: {' '.join(message.split())[-500:]}") from None
        finally:
            del conv
    files.write_bytes(job["path"], data)
    del data
    if mode == "int8-full":
        facts.update(_integer_facts(job["path"]), activations=job.get("activations", "int8"))
    if job.get("finish") == "w8a16":
        facts.update(_to_w8a16(job["path"], feeds, component, job["signature"]))
    elif job.get("finish") == "int4":
        _to_int4(job["path"], component)
    return facts


def _integer_facts(path):
    """``integer_only`` (no op of the file computes in float) and ``float_ops`` (``{op: count}`` of those that
    do), read from the written file, not from the converter's settings."""
    found = quantize.float_ops(path)
    return {"integer_only": not found, "float_ops": found}


def _run_convert(job_path):
    """Converter-process entry point (``python -m sd_keras.export.litert --convert JOB.json``)."""
    with open(job_path) as handle:
        job = json.load(handle)
    feeds = None
    if job["representative"]:
        feeds = quantize.load_records(job["representative"])["feeds"]
    try:
        result = {"facts": convert_saved_model(job, feeds)}
    except (ExportError, ValueError) as error:
        result = {"error": str(error)}
    with open(job["result"], "w") as handle:
        json.dump(result, handle)


def _quantizer_error(error):
    """The quantizer's error in one line: its type, its message's last 300 characters, and where it was raised
    (the quantizer's errors are often a bare ``RuntimeError()`` from its native code)."""
    message = " ".join(str(error).split())[-300:]
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"{type(error).__name__}{': ' + message if message else ' without a message'}{where}"


def _to_int4(path, component):
    """Quantize the fp32 file at ``path`` in place to int4 weights (``quantize.quantize_int4``)."""
    float_path = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.fp32")
    os.replace(path, float_path)
    try:
        quantize.quantize_int4(float_path, path)
    except (RuntimeError, ValueError, KeyError) as error:  # e.g. a weight dimension the block size does not divide
        raise ExportError(f"{component}: int4 weights failed: {_quantizer_error(error)}") from None
    finally:
        os.unlink(float_path)


def _to_w8a16(path, feeds, component, signature_key):
    """Quantize the fp32 file at ``path`` in place to int8 weights / int16 activations; its integer facts."""
    try:
        kept = quantize.quantize_w8a16(path, path, feeds, signature_key)
    except (RuntimeError, ValueError, KeyError) as error:  # the quantizer's calibration or rewriting failed
        raise ExportError(f"{component}: int16 activations (w8a16) failed: {_quantizer_error(error)}") from None
    facts = {"activations": "int16", **_integer_facts(path)}
    if kept["im2col_float"]:
        facts["im2col_float_convolutions"] = len(kept["im2col_float"])
    if kept["reductions_float"]:
        facts["float_reductions"] = len(kept["reductions_float"])
    return facts


def _convert_all(models, config, image_size, plan, output_dir, representative, components,
                 max_part_bytes=None):
    """Prepare and convert one file at a time (each SavedModel is removed once converted)."""
    tasks, graphs = [], export_graphs({component: models[component] for component in components})
    with tempfile.TemporaryDirectory(prefix="sd_keras_convert_") as workdir:
        for task in prepare_components(models, config, image_size, plan, output_dir, representative, components,
                                       workdir, max_part_bytes=max_part_bytes):
            tasks.append(run_task(task, models=graphs))
            shutil.rmtree(task["job"]["workdir"], ignore_errors=True)
    return collect_results(tasks)


def prepare_components(models, config, image_size, plan, output_dir, representative, components, workdir, *,
                       max_part_bytes=None):
    """Yield the conversion tasks of ``components`` (JSON-able dicts; ``run_task`` runs one), each with its
    SavedModel written into a folder of its own under ``workdir``: one per component, or one per UNet part.
    Only this step needs the Keras models: the UNet parts' chain is checked against the whole UNet here."""
    signatures = component_signatures(config, image_size)
    max_part_bytes = MAX_PART_BYTES if max_part_bytes is None else max_part_bytes
    plan = quantize.parse_spec(plan)
    models = export_graphs({component: models[component] for component in components})
    for component in components:
        mode = plan[component]
        path = os.path.join(output_dir, f"{component}.tflite")
        feeds = (representative or {}).get(component) if quantize.needs_representative_data(mode) else None
        if quantize.needs_representative_data(mode) and not feeds:
            raise ExportError(f"{component}: {mode} needs representative data for this component")
        if component == "diffusion_model" and max_part_bytes and weight_bytes(models[component]) > max_part_bytes:
            yield from _prepare_unet_parts(models[component], config, signatures[component], mode, output_dir,
                                           feeds, max_part_bytes, workdir)
            continue
        folder = tempfile.mkdtemp(prefix=f"{component}_", dir=workdir)
        job = prepare_function(_serving_function(models[component], component), models[component].weights,
                               component, signatures[component], mode, path, folder, representative=feeds)
        yield {"component": component, "mode": mode, "signature": signatures[component], "job": job}


def _prepare_unet_parts(model, config, signature, mode, output_dir, feeds, max_part_bytes, workdir):
    """The UNet as consecutive part files (``unet_parts``); their chain is checked against the whole model on
    one input before any part is prepared. Yields one task per part, each converted in its own process."""
    from sd_keras.export import unet_parts

    steps = unet_parts.unet_steps(model, config.unet)
    parts = unet_parts.plan_parts(model, steps, max_part_bytes)
    interfaces = unet_parts.part_interfaces(steps, parts)
    rng = np.random.default_rng(0)
    probe = {spec["name"]: rng.standard_normal(spec["shape"]).astype(np.float32) for spec in signature["inputs"]}
    traced_inputs, traced_outputs = unet_parts.trace_values(steps, parts, interfaces, probe)
    output = traced_outputs[-1][unet_parts.OUTPUT]
    whole = np.asarray(model.predict_on_batch(probe), np.float32)
    if not np.allclose(output, whole, rtol=1e-4, atol=1e-4 * float(np.abs(whole).max())):
        raise ExportError("diffusion_model: the chain of UNet parts does not compute the whole model")
    del whole, output, probe
    part_feeds = [[] for _ in parts]
    for feed in feeds or ():
        for index, values in enumerate(unet_parts.trace_values(steps, parts, interfaces, feed)[0]):
            part_feeds[index].append(values)
    release_freed_memory()
    for index, (part, (inputs, outputs)) in enumerate(zip(parts, interfaces)):
        name = f"diffusion_model_part{index}"
        part_signature = {"signature": name, "inputs": [_spec(n, traced_inputs[index][n].shape) for n in inputs],
                          "outputs": [_spec(n, traced_outputs[index][n].shape) for n in outputs]}
        path = os.path.join(output_dir, f"{name}.tflite")
        weights = [w for layer in unet_parts.part_layers(steps, part) for w in model.get_layer(layer).weights]
        folder = tempfile.mkdtemp(prefix=f"{name}_", dir=workdir)
        job = prepare_function(unet_parts.part_function(steps, part, (inputs, outputs)), weights,
                               f"diffusion_model part {index + 1}/{len(parts)}", part_signature, mode, path,
                               folder, representative=part_feeds[index] or None)
        part_feeds[index] = None
        yield {"component": "diffusion_model", "mode": mode, "signature": part_signature, "job": job,
               "part": {"index": index, "count": len(parts), "steps": [step.name for step in steps[part[0]:part[1]]]}}


def run_task(task, *, models=None):
    """Convert one ``prepare_components`` task (int4 and w8a16 files are made by the converting process too) and
    run int8-full's activation check (against ``models``' Keras component or the task's
    ``widening_references``). Returns the task with its ``facts``. A UNet part (whatever its size) is converted in
    a process of its own."""
    from ai_edge_litert.interpreter import Interpreter

    job, part = task["job"], task.get("part")
    path, label, key = job["path"], job["component"], task["signature"]["signature"]
    facts = run_job(job, isolate=True if part else None)
    if needs_widening_check(task):
        graph = None if models is None else models[task["component"]]
        if graph is None and "widening_references" not in task:
            raise ExportError(f"{label}: int8-full needs the Keras component or its widening_references")
        facts = widen_activations(dict(task, facts=facts), graph=graph,
                                  references=task.get("widening_references"))["facts"]
    signature = task["signature"]
    if part is not None:
        # the converter drops inputs a part does not read (e.g. the context of a part without attention)
        kept = set(Interpreter(model_path=path).get_signature_list()[key]["inputs"])
        signature = dict(signature, inputs=[spec for spec in signature["inputs"] if spec["name"] in kept])
    return dict(task, signature=signature, facts=facts)


def needs_widening_check(task):
    """An int8-full component file (not a UNet part): ``widen_activations`` measures it against Keras."""
    return task["mode"] == "int8-full" and task.get("part") is None


def widening_references(task, graph):
    """The Keras outputs ``widen_activations`` compares an int8-full file with (``graph``: the component as
    ``export_graphs`` gives it), computed while the model is at hand."""
    from sd_keras.export import verify

    samples = _widening_samples(quantize.load_records(task["job"]["representative"])["feeds"])
    return [verify._keras_output(graph, task["component"], sample) for sample in samples]


def _widening_samples(feeds):
    return feeds[:: max(1, len(feeds) // 4)][:4]


def widen_activations(task, *, graph=None, references=None):
    """int8-full: measure the int8-activation file against Keras (``graph``, or the ``widening_references``) on
    up to 4 of the calibration feeds; below ``quantize.INT8_ACTIVATIONS_MIN_PSNR_DB`` replace it with the
    component at int16 activations and int8 weights (``w8a16``: integer inputs such as the text encoder's
    positions are left alone, ops without an int16 kernel stay float), converted from the task's SavedModel.
    A widened file that cannot run, or runs worse than the int8 one, is an ExportError. Returns the task with
    its facts updated."""
    from sd_keras.export import verify

    job, component, signature = task["job"], task["component"], task["signature"]
    path = job["path"]
    feeds = quantize.load_records(job["representative"])["feeds"]
    samples = _widening_samples(feeds)

    def psnr_of(file):
        return verify.compare_component(graph, component, file, signature, samples,
                                        references=references)["psnr_db"]

    psnr = psnr_of(path)
    facts = {**task["facts"], "int8_activations_psnr_db": round(float(psnr), 2)}
    if psnr >= quantize.INT8_ACTIVATIONS_MIN_PSNR_DB:
        return dict(task, facts=facts)
    wide = f"{path}.int16"
    try:
        widened = run_job(dict(job, mode="fp32", finish="w8a16", path=wide,
                               large=job["weight_bytes"] > _LARGE_MODEL_MARGIN * FLATBUFFER_LIMIT))
        widened = {key: widened[key] for key in ("activations", "integer_only", "float_ops",
                                                 "im2col_float_convolutions", "float_reductions") if key in widened}
        wide_psnr = psnr_of(wide)
        if not wide_psnr > psnr:  # NaN included
            raise ExportError(f"{component}: int16 activations measure {wide_psnr:.1f} dB against Keras, no "
                              f"better than int8's {psnr:.1f} dB")
        os.replace(wide, path)
    finally:
        if os.path.exists(wide):
            os.unlink(wide)
    return dict(task, facts={**facts, **widened, "int16_activations_psnr_db": round(float(wide_psnr), 2)})


def collect_results(tasks):
    """``export_components``' result from the tasks ``run_task`` returned."""
    results = {}
    for task in tasks:
        component, part, facts = task["component"], task.get("part"), task["facts"]
        file = os.path.basename(task["job"]["path"])
        if part is None:
            results[component] = {"file": file, **facts}
            continue
        entry = results.setdefault(component, {"parts": [], "large_model_layout": False})
        entry["parts"].append({"file": file, **task["signature"], **facts, "steps": part["steps"]})
        entry["large_model_layout"] = entry["large_model_layout"] or bool(facts["large_model_layout"])
    return results


def export_components(models, config, image_size, mode, output_dir, *, representative=None, components=None,
                      max_part_bytes=None):
    """Write ``<component>.tflite`` for each component into ``output_dir``.

    Args:
        models: ``{component: keras.Model}`` (float32 weights; mixed-precision models are rebuilt in float32).
        config: the ``ModelConfig`` the models were built from.
        image_size: (height, width) fixed in the exported shapes.
        mode: a quantization mode, or a per-component plan (``quantize.parse_spec``'s dict or text).
        representative: ``{component: [feed, ...]}`` for ``int8-full`` and ``w8a16``.
        components: which components (default: all present in ``models``).
        max_part_bytes: a UNet with more float32 weight bytes is written as consecutive parts of at most this
            size (``unet_parts``); default ``MAX_PART_BYTES``; 0: never split.

    Returns:
        ``{component: {"file": name, "large_model_layout": bool, "integer_only": bool | None, "activations":
        "int8" | "int16" | None, ...}}`` (int8-full and w8a16 add ``float_ops``, int8-full
        ``int8_activations_psnr_db``); a UNet written as parts
        has ``{"parts": [{"file", "signature", "inputs", "outputs", ...}, ...], "large_model_layout"}``.
    """
    import keras

    mode = quantize.parse_spec(mode)
    components = [c for c in (components or COMPONENTS) if models.get(c) is not None]
    if keras.backend.backend() == "tensorflow":
        models = {c: _float32_model(models[c], config, c) for c in components}
        return _convert_all(models, config, image_size, mode, output_dir, representative, components,
                            max_part_bytes)
    return _export_in_subprocess(models, config, image_size, mode, output_dir, representative, components,
                                 max_part_bytes)


def _float32_model(model, config, component):
    """The model itself when it computes in float32; else a float32 rebuild with the same weights."""
    from sd_keras import models as registry

    return registry.rebuild(model, component, config, "float32")


def _export_in_subprocess(models, config, image_size, mode, output_dir, representative, components,
                          max_part_bytes):
    with tempfile.TemporaryDirectory(prefix="sd_keras_export_job_") as job_dir:
        weights = {}
        for component in components:
            weights[component] = os.path.join(job_dir, f"{component}.weights.h5")
            models[component].save_weights(weights[component])
        records = None
        if representative:
            records = quantize.save_records(representative, os.path.join(job_dir, "representative.npz"))
        job = {"config": config.to_dict(), "image_size": list(image_size), "mode": mode, "output_dir": output_dir,
               "components": components, "weights": weights, "representative": records,
               "max_part_bytes": max_part_bytes,
               "result": os.path.join(job_dir, "result.json")}
        job_path = os.path.join(job_dir, "job.json")
        with open(job_path, "w") as handle:
            json.dump(job, handle)
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
        process = subprocess.run([sys.executable, "-m", "sd_keras.export.litert", job_path], env=env,
                                 capture_output=True, text=True)
        if process.returncode != 0 or not os.path.exists(job["result"]):
            tail = "\n".join(process.stderr.strip().splitlines()[-15:])
            raise ExportError(f"the TensorFlow export worker failed (exit {process.returncode}):\n{tail}")
        with open(job["result"]) as handle:
            result = json.load(handle)
    if "error" in result:
        raise ExportError(result["error"])
    return result["components"]


def _run_job(job_path):
    """Worker entry point: rebuild the models in float32 from the saved weights and convert them."""
    from sd_keras import models as registry

    with open(job_path) as handle:
        job = json.load(handle)
    config = config_from_dict(job["config"])
    models = {}
    for component in job["components"]:
        models[component] = registry.build(component, config)
        models[component].load_weights(job["weights"][component])
    representative = quantize.load_records(job["representative"]) if job["representative"] else None
    try:
        components = _convert_all(models, config, tuple(job["image_size"]), job["mode"], job["output_dir"],
                                  representative, job["components"], job.get("max_part_bytes"))
        result = {"components": components}
    except (ExportError, ValueError) as error:
        result = {"error": str(error)}
    with open(job["result"], "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    if os.environ.get("KERAS_BACKEND") != "tensorflow":
        sys.exit("sd_keras.export.litert: run with KERAS_BACKEND=tensorflow")
    if sys.argv[1] == "--convert":
        _run_convert(sys.argv[2])
    else:
        _run_job(sys.argv[1])
