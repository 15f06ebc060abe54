"""Quantization modes of the LiteRT export and the representative data the integer modes calibrate on.

Modes (``--quantize``):

``fp32``       float32 weights and compute: the reference, gated at max-abs-relative error <= 1e-4.
``fp16``       float16 weights, dequantized to float32 at load (the converter's ``supported_types=[float16]``).
``int8``       dynamic-range: int8 weights (per channel), float activations quantized on the fly by the kernels.
``int8-full``  full integer: int8 weights and activations, ranges calibrated on a representative dataset recorded
               from real sampling trajectories (``record_trajectories``); inputs and outputs stay float32. A
               component whose int8 activations lose too much against Keras on that data (PSNR under
               ``INT8_ACTIVATIONS_MIN_PSNR_DB``; the VAE's and CLIP's activations have outliers) is converted
               again with int16 activations and int8 weights (``w8a16`` below); the manifest names each
               component's activation type and whether its file holds any float op (``integer_only``).
``w8a16``      int8 weights (per channel) and int16 activations, calibrated on the same recorded trajectories:
               ``ai-edge-quantizer``'s static recipe applied to the fp32 ``.tflite`` (what phone NPUs run for
               SD 1.5). Integer inputs (tokens, positions) are left alone, ops on values int16 cannot hold (the
               attention mask's -inf select and the softmax reading it) and ops without an int16 kernel stay
               float, and the file's inputs and outputs stay float32 (a QUANTIZE op after each input, a
               DEQUANTIZE before each output).
``int4``       int4 weights through ``ai-edge-quantizer`` applied to the fp32 ``.tflite``: fully-connected and
               embedding weights blockwise (blocks of 32 along the input axis; the quantizer's only blockwise
               int4 configuration, executed with on-the-fly activation quantization), convolution weights per
               output channel, weight-only (dequantized to float before the convolution). The text encoder's
               token embedding (a GATHER op, not covered by the quantizer's int4 recipes) stays float32.

The TensorFlow Model Optimization Toolkit is not used: it works only with Keras 2 (``tf_keras``) and sets
``TF_USE_LEGACY_KERAS=1`` when imported, which would switch this process away from Keras 3.

Per component: ``parse_spec("unet=int8,text_encoder=fp16,decoder=fp16")`` gives each component its own mode
(components not named take a bare mode in the list, else ``fp32``).

Example:
    >>> check_mode("int8")
    'int8'
    >>> parse_spec("fp16,unet=int8")["diffusion_model"]
    'int8'
"""

import os
import re

import numpy as np

from sd_keras import files
from sd_keras.errors import InputError

MODES = ("fp32", "fp16", "int8", "int8-full", "w8a16", "int4")
COMPONENTS = ("text_encoder", "text_encoder_2", "diffusion_model", "decoder", "image_encoder")
COMPONENT_NAMES = {"text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2", "unet": "diffusion_model",
                   "diffusion_model": "diffusion_model", "decoder": "decoder", "image_encoder": "image_encoder"}
# w8a16: a calibrated value whose magnitude passes this is not an activation int16 can hold with useful resolution
# (the attention mask's select of -inf / float32 min): the ops producing or reading it stay float.
W8A16_FLOAT_RANGE = 1e6
W8A16_CALIBRATION = "CALIBRATION_PROFILER_BASED"  # ai-edge-quantizer's CalibrationMode for w8a16 (see there)
W8A16_FLOAT_OPS = ("RSQRT",)  # ... and so do these ops and the ops reading their outputs (see quantize_w8a16)
# LiteRT's int16-activation CONV_2D gathers its input into one im2col buffer (batch x output pixels x kernel
# height x width x input channels elements) and refuses to prepare one over this many ("Conv im2col elements
# exceed the 32-bit integer limit"): the SDXL decoder's last block at 1024x1024 needs 2.4 billion. Such a
# convolution stays float in a w8a16 file (float convolutions have no such buffer); int8 ones prepare.
INT16_CONV_IM2COL_LIMIT = 2**31 - 1
# LiteRT's int16 MEAN (and SUM) adds the int16 values it reduces in an int32: over more than this many values per
# output it can overflow and returns garbage (the mean of 512x512 values near 3 came out 0.5; GroupNorm reduces
# 1024x1024x4 values in the SDXL decoder at 1024x1024, 512x512x4 in SD 1.x's at 512x512). Such reductions stay
# float in a w8a16 file.
INT16_REDUCTION_LIMIT = 2**31 // 2**15
# what a quantized component file's manifest entry and report say about it (export/BUNDLE.md)
FILE_FACTS = ("integer_only", "float_ops", "activations", "im2col_float_convolutions", "float_reductions",
              "int8_activations_psnr_db", "int16_activations_psnr_db")
INT4_BLOCK_SIZE = 32
INT8_ACTIVATIONS_MIN_PSNR_DB = 30.0  # int8-full: below this on the calibration data, use int16 activations
# ai-edge-quantizer (0.10) quantizes a weight of more than 32 MiB in row chunks of its 2-D reshape, and broadcasting
# per-channel scales of rank 3 or more to that reshape fails ("input operand has more dimensions than allowed by
# the axis remapping"; google-ai-edge/ai-edge-quantizer#512, #472): every 3x3 convolution of 1024 or more channels
# of the SD UNets. ``_weights_in_slices`` hands such a weight to the quantizer in slices of its first axis below
# this size instead (per-element arithmetic: the slices quantize exactly as the whole would).
QUANTIZER_CHUNKED_BYTES = 32 * 1024 * 1024


def check_mode(mode):
    """``mode`` if it is one of ``MODES``; ValueError naming the known modes otherwise."""
    if mode not in MODES:
        raise InputError(f"unknown quantization mode {mode!r}; use one of {', '.join(MODES)}")
    return mode


def parse_spec(spec):
    """``{component: mode}`` for every component from a ``--quantize`` value.

    ``spec`` is a mode (``"int8"``: every component), or a comma-separated list of ``component=mode`` items
    (components ``unet``/``diffusion_model``, ``text_encoder``, ``text_encoder_2`` (SDXL), ``decoder``,
    ``image_encoder``) with at most one
    bare mode for the components not named (default ``fp32``); a dict ``{component: mode}`` is checked the same
    way. ValueError names an unknown component or mode, a repeated component or a second default.

    Example:
        >>> parse_spec("unet=int8,text_encoder=fp16,decoder=fp16")["image_encoder"]
        'fp32'
    """
    if isinstance(spec, dict):
        items = [f"{name}={mode}" for name, mode in spec.items()]
    elif isinstance(spec, str) and spec.strip():
        items = [item.strip() for item in spec.split(",")]
    else:
        raise InputError(f"quantization must be a mode ({', '.join(MODES)}) or component=mode items, got {spec!r}")
    default, plan = None, {}
    for item in items:
        if "=" not in item:
            if default is not None:
                raise InputError(f"quantization {spec!r}: two modes for the unnamed components ({default!r} and "
                                 f"{item!r}); name the component of each")
            default = check_mode(item)
            continue
        name, mode = (part.strip() for part in item.split("=", 1))
        if name not in COMPONENT_NAMES:
            raise InputError(f"quantization {spec!r}: unknown component {name!r}; use "
                             f"{', '.join(sorted(set(COMPONENT_NAMES) - {'diffusion_model'}))}")
        component = COMPONENT_NAMES[name]
        if component in plan:
            raise InputError(f"quantization {spec!r}: {name} is given twice")
        if mode not in MODES:
            raise InputError(f"quantization {spec!r}: unknown mode {mode!r} for {name}; use one of "
                             f"{', '.join(MODES)}")
        plan[component] = mode
    return {component: plan.get(component, default or "fp32") for component in COMPONENTS}


def spec_name(plan, components=COMPONENTS):
    """The canonical text of a plan: its mode when every component in ``components`` shares one, else
    ``component=mode`` items in component order (what the manifest and report record)."""
    modes = [plan[component] for component in components]
    if len(set(modes)) == 1:
        return modes[0]
    return ",".join(f"{component}={plan[component]}" for component in components)


def needs_representative_data(mode):
    return mode in ("int8-full", "w8a16")


def converter_mode(mode):
    """The mode the TFLite converter produces; int4 and w8a16 start from the fp32 model and are quantized
    afterwards by ``ai-edge-quantizer``."""
    return "fp32" if mode in ("int4", "w8a16") else mode


def configure_converter(converter, mode, representative=None, *, integer_only=True, activations="int8"):
    """Set a ``tf.lite.TFLiteConverter``'s optimisation options for ``mode`` (TensorFlow backend only).

    Args:
        converter: the converter (from a SavedModel).
        mode: one of ``MODES`` except ``int4``.
        representative: for ``int8-full``, a list of feed dicts (input name -> array with the signature's shape).
        integer_only: ``int8-full`` with integer builtins only (``TFLITE_BUILTINS_INT8``); False allows float
            kernels where no int8 kernel exists.
        activations: ``int8-full``'s activation type: ``"int8"``, or ``"int16"`` (the converter's own 16x8
            scheme; the exporter does not use it: it calibrates the int32 positions input and emits int16 kernels
            LiteRT lacks, such as SQUARED_DIFFERENCE, so components are widened with ``quantize_w8a16``).
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
    elif mode in ("int4", "w8a16"):
        raise ValueError(f"{mode} is applied to the fp32 model with ai-edge-quantizer, not by the converter")
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
    with _weights_in_slices():
        result = engine.quantize()
    with files.atomic_path(output_path) as temporary:
        result.export_model(temporary, overwrite=True)
    return output_path


class _weights_in_slices:
    """Within this context, ai-edge-quantizer's ``uniform_quantize`` receives weights of rank 3 or more above
    ``limit`` bytes in slices along their first axis (scales and zero points sliced with them where they vary
    along it), so its failing chunked path is never taken; see ``QUANTIZER_CHUNKED_BYTES``."""

    def __init__(self, limit=None):
        self.limit = QUANTIZER_CHUNKED_BYTES if limit is None else limit

    def __enter__(self):
        from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as module

        self.module, self.original = module, module.uniform_quantize
        module.uniform_quantize = self.quantize
        return self

    def __exit__(self, *exc):
        self.module.uniform_quantize = self.original

    def quantize(self, tensor_data, quantization_params, is_blockwise_quant=False):
        import dataclasses

        tensor_data = np.asarray(tensor_data)
        if is_blockwise_quant or tensor_data.ndim < 3 or tensor_data.nbytes <= self.limit:
            return self.original(tensor_data, quantization_params, is_blockwise_quant)
        params = self.module.fix_quantization_params_rank(tensor_data, quantization_params)
        rows = tensor_data.shape[0]
        per_row = max(1, tensor_data.nbytes // rows)
        step = max(1, self.limit // per_row)
        pieces = []
        for start in range(0, rows, step):
            rows_here = slice(start, min(start + step, rows))

            def along(values):
                values = np.asarray(values)
                return values[rows_here] if values.ndim and values.shape[0] == rows and rows > 1 else values

            piece = dataclasses.replace(params, scale=along(params.scale), zero_point=along(params.zero_point))
            pieces.append(self.original(tensor_data[rows_here], piece, False))
        return np.concatenate(pieces, axis=0)


class _calibration_check_without_tensors:
    """Within this context, ai-edge-quantizer's check that every tensor of a signature has calibrated ranges
    reads the tensors' names from an interpreter that allocates nothing. Its own check builds an interpreter that
    keeps every intermediate tensor and allocates them all, only to read their names: for the last SDXL UNet part
    at 1024x1024 that allocation fails (a bare ``RuntimeError`` from ``allocate_tensors``)."""

    def __enter__(self):
        from ai_edge_quantizer import quantizer

        self.owner, self.original = quantizer.Quantizer, quantizer.Quantizer._ensure_model_qsv_sufficient
        self.owner._ensure_model_qsv_sufficient = self.check
        return self

    def __exit__(self, *exc):
        self.owner._ensure_model_qsv_sufficient = self.original

    @staticmethod
    def check(engine, calibration_result):
        from ai_edge_quantizer.utils import tfl_interpreter_utils as utils

        empty = {name for name, ranges in calibration_result.items() if not ranges}
        if not empty:
            return
        interpreter = utils.create_tfl_interpreter(engine._float_model_buffer, allocate_tensors=False,
                                                   preserve_all_tensors=False)
        for key in interpreter.get_signature_list():
            subgraph = utils.get_signature_main_subgraph_index(interpreter, key)
            missing = sorted({tensor["name"] for tensor in interpreter.get_tensor_details(subgraph)} & empty)
            if missing:
                raise ValueError(f"Missing QSVs (min/max) for tensor {missing[0]} in Signature '{key}'. Please "
                                 f"check if Signature {key} has been calibrated.")


def quantize_w8a16(float_path, output_path, feeds, signature):
    """Write the int8-weight, int16-activation version of the float ``.tflite`` at ``float_path`` (atomic).

    Args:
        float_path: the fp32 file.
        output_path: where to write (may equal ``float_path``).
        feeds: calibration feeds (dicts of the signature's inputs; extra keys are ignored).
        signature: the signature key.

    Returns:
        ``{"kept_float": [op scopes kept float: their values pass W8A16_FLOAT_RANGE, an op reads a
        W8A16_FLOAT_OPS output, or computes what one reads (``norm_statistics``)], "im2col_float": [CONV_2D scopes
        kept float because LiteRT's int16 kernel could not prepare them (``oversized_int16_convolutions``)],
        "reductions_float": [MEAN/SUM scopes kept float because an int16 sum of their inputs could overflow
        (``oversized_int16_reductions``)]}``.
    """
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import calibrator, quantizer, recipe, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    interpreter = Interpreter(model_path=str(float_path))
    inputs = interpreter.get_signature_runner(signature).get_input_details()
    feeds = [{name: np.asarray(feed[name], details["dtype"]) for name, details in inputs.items()}
             for feed in feeds]
    # ranges: the extremes over every feed (the quantizer's default is a moving average of each feed's extremes,
    # which clips the values of the feeds beyond the average: the first and last steps of a trajectory). The
    # profiler-based calibration tracks them inside the interpreter: the default mode keeps every intermediate
    # tensor of the run, more memory than an SDXL UNet part at 1024x1024 leaves on a 24 GB machine. Its extremes
    # are the same; given in the tensors' own dtypes, as the default mode gives them, the files are byte for byte
    # the default mode's (tests/test_export_quantized.py).
    recipes = recipe_manager.RecipeManager()
    recipes.load_quantization_recipe(recipe.static_wi8_ai16())
    calibrator_ = calibrator.Calibrator(str(float_path), num_threads=os.cpu_count() or 1,
                                        mode=getattr(calibrator.CalibrationMode, W8A16_CALIBRATION),
                                        qsv_update_func=qsv_utils.min_max_update)
    calibrator_.calibrate({signature: feeds}, recipes)
    dtypes = {tensor["name"]: np.dtype(tensor["dtype"]) for tensor in interpreter.get_tensor_details()}
    calibration = {name: {key: np.asarray(value, dtypes.get(name)) if key in ("min", "max") else value
                          for key, value in ranges.items()}
                   for name, ranges in calibrator_.get_model_qsvs().items()}
    del calibrator_
    huge = {name for name, ranges in calibration.items()
            if ranges and max(float(np.max(np.abs(ranges["min"]))), float(np.max(np.abs(ranges["max"]))))
            > W8A16_FLOAT_RANGE}
    names = {tensor["index"]: tensor["name"] for tensor in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    # 1/sqrt(variance + eps) of the norms: calibration meets near-constant groups, whose huge values would
    # leave the usual ones a few int16 steps; the reciprocal and the multiply reading it stay float
    huge |= {names[i] for op in ops if op["op_name"] in W8A16_FLOAT_OPS for i in op["outputs"] if i >= 0}
    kept_float = set(norm_statistics(interpreter))
    for op in ops:
        touched = {names[i] for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0}
        if touched & huge:  # the quantizer names an op's scope by its outputs: "out1;out2;"
            kept_float.add(_scope(op, names))
    im2col_float = set(oversized_int16_convolutions(interpreter))
    reductions_float = set(oversized_int16_reductions(interpreter))
    kept_float |= im2col_float | reductions_float
    plan = recipe.static_wi8_ai16()
    plan += [{"regex": "^" + re.escape(scope) + "$", "operation": "*", "algorithm_key": "no_quantize"}
             for scope in sorted(kept_float)]
    engine = quantizer.Quantizer(str(float_path))
    engine.load_quantization_recipe(plan)
    with _weights_in_slices(), _calibration_check_without_tensors():
        quantized = engine.quantize(calibration, enable_progress_report=False).quantized_model
    files.write_bytes(output_path, _float_inputs_and_outputs(quantized))
    return {"kept_float": sorted(kept_float), "im2col_float": sorted(im2col_float),
            "reductions_float": sorted(reductions_float)}


def _scope(op, names):
    """An op's scope as ai-edge-quantizer names it: its outputs' names, each followed by ``;``."""
    return "".join(names[i] + ";" for i in op["outputs"] if i >= 0)


def norm_statistics(interpreter):
    """The ops of a float model (a LiteRT ``Interpreter``) that compute what a norm's ``RSQRT`` reads: the
    variance's reduction (MEAN or SUM) and the ops between it and the ``RSQRT`` (the ``+ epsilon``), found by
    walking back from each ``RSQRT`` input through tensors of its shape; named by scope as the quantizer names them.

    w8a16 keeps them float: one int16 scale per tensor covers every group's variance, so a near-constant group's
    (a skip connection of small values concatenated to large ones: the SDXL UNet's decoder side) rounds to zero or
    a few steps, and its 1/sqrt(variance + epsilon) comes out infinite or several times off (a tiny SDXL UNet fell
    to cosine 0.93 against Keras on its own calibration input)."""
    tensors = {tensor["index"]: tensor for tensor in interpreter.get_tensor_details()}
    names = {index: tensor["name"] for index, tensor in tensors.items()}
    ops = interpreter._get_ops_details()
    producers = {index: op for op in ops for index in op["outputs"] if index >= 0}

    def size(index):
        return int(np.prod(tensors[index]["shape"]))

    found = []
    for op in ops:
        if op["op_name"] not in W8A16_FLOAT_OPS:
            continue
        statistics = size(op["inputs"][0])
        pending, seen = [op["inputs"][0]], set()
        while pending:
            producer = producers.get(pending.pop())
            if producer is None or producer["index"] in seen or size(producer["outputs"][0]) != statistics:
                continue
            seen.add(producer["index"])
            found.append(_scope(producer, names))
            if producer["op_name"] not in ("MEAN", "SUM"):  # a reduction starts the statistics
                pending += [index for index in producer["inputs"] if index >= 0]
    return sorted(set(found))


def oversized_int16_reductions(interpreter, limit=INT16_REDUCTION_LIMIT):
    """The MEAN and SUM ops of a float model (a LiteRT ``Interpreter``) that reduce more than ``limit`` values into
    each output value (LiteRT's int16 kernels sum them in an int32), named by scope as the quantizer names them."""
    tensors = {tensor["index"]: tensor for tensor in interpreter.get_tensor_details()}
    found = []
    for op in interpreter._get_ops_details():
        if op["op_name"] not in ("MEAN", "SUM"):
            continue
        values = int(np.prod(tensors[op["inputs"][0]]["shape"]))
        outputs = max(1, int(np.prod(tensors[op["outputs"][0]]["shape"])))
        if values // outputs > limit:
            found.append(_scope(op, {index: tensor["name"] for index, tensor in tensors.items()}))
    return found


def oversized_int16_convolutions(interpreter, limit=INT16_CONV_IM2COL_LIMIT):
    """The CONV_2D ops of a float model (a LiteRT ``Interpreter``) whose im2col buffer with int16 activations
    would pass ``limit`` elements, named by scope as the quantizer names them (their outputs, ``"out;"``).

    A convolution needs the buffer unless its kernel is 1x1 and it keeps the input's height and width.
    """
    tensors = {tensor["index"]: tensor for tensor in interpreter.get_tensor_details()}
    found = []
    for op in interpreter._get_ops_details():
        if op["op_name"] != "CONV_2D":
            continue
        source, kernel, output = (tensors[op["inputs"][0]]["shape"], tensors[op["inputs"][1]]["shape"],
                                  tensors[op["outputs"][0]]["shape"])
        (_, kernel_height, kernel_width, channels), (batch, height, width, _) = kernel, output
        if kernel_height * kernel_width == 1 and tuple(source[1:3]) == (height, width):
            continue
        if int(batch) * int(height) * int(width) * int(kernel_height) * int(kernel_width) * int(channels) > limit:
            found.append(_scope(op, {index: tensor["name"] for index, tensor in tensors.items()}))
    return found


def _float_inputs_and_outputs(model_bytes):
    """The quantizer makes a signature's float inputs and outputs int16 (quantized); give them back float32
    tensors with a QUANTIZE op after each input and a DEQUANTIZE op before each output (what the converter does),
    so a bundle's inputs and outputs are float32 in every mode."""
    from ai_edge_litert.tools import flatbuffer_utils
    from ai_edge_quantizer import qtyping

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))

    def opcode(code):
        for index, existing in enumerate(model.operatorCodes):
            if existing.builtinCode == code:
                return index
        added = qtyping.OperatorCodeT()
        added.builtinCode, added.deprecatedBuiltinCode, added.version = code, min(code, 127), 1
        model.operatorCodes.append(added)
        return len(model.operatorCodes) - 1

    integer_types = (qtyping.TensorType.INT16, qtyping.TensorType.INT8)
    for signature in model.signatureDefs:
        subgraph = model.subgraphs[signature.subgraphIndex]
        for kind in ("inputs", "outputs"):
            for item in getattr(signature, kind):
                index = item.tensorIndex
                tensor = subgraph.tensors[index]
                if tensor.type not in integer_types or tensor.quantization is None:
                    continue
                outer = qtyping.TensorT()
                outer.shape, outer.type, outer.name, outer.buffer = (list(tensor.shape), qtyping.TensorType.FLOAT32,
                                                                     tensor.name, 0)
                tensor.name = tensor.name + b"_quantized"
                outer_index = len(subgraph.tensors)
                subgraph.tensors.append(outer)
                op = qtyping.OperatorT()
                if kind == "inputs":
                    op.opcodeIndex, op.inputs, op.outputs = (opcode(qtyping.BuiltinOperator.QUANTIZE),
                                                             [outer_index], [index])
                    subgraph.operators.insert(0, op)
                    subgraph.inputs = [outer_index if i == index else i for i in subgraph.inputs]
                else:
                    op.opcodeIndex, op.inputs, op.outputs = (opcode(qtyping.BuiltinOperator.DEQUANTIZE),
                                                             [index], [outer_index])
                    subgraph.operators.append(op)
                    subgraph.outputs = [outer_index if i == index else i for i in subgraph.outputs]
                item.tensorIndex = outer_index
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


# ops that move or reinterpret values without computing in float; boundary QUANTIZE/DEQUANTIZE are not counted
_BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")


def float_ops(path):
    """``{op name: count}`` of the ops of a ``.tflite`` file that compute in float (a float32/float16 input or
    output), leaving out the QUANTIZE after a float input and the DEQUANTIZE before a float output: an empty
    dict means the file is integer-only.

    Example:
        >>> float_ops("unet_int8_full.tflite")   # doctest: +SKIP
        {'NEG': 45, 'SQUARE': 24}
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    tensors = {tensor["index"]: tensor for tensor in interpreter.get_tensor_details()}
    boundary = set()
    for signature in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(signature)
        boundary |= {d["index"] for d in runner.get_input_details().values()}
        boundary |= {d["index"] for d in runner.get_output_details().values()}
    counts = {}
    for op in interpreter._get_ops_details():
        used = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0 and i in tensors]
        floating = [i for i in used if np.dtype(tensors[i]["dtype"]).kind == "f"]
        if not floating:
            continue
        if op["op_name"] in _BOUNDARY_OPS and set(floating) <= boundary:
            continue
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return dict(sorted(counts.items()))


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

    An SDXL model (``StableDiffusionXL``) records both text encoders' tokens (each with its own padding) and the
    UNet's ``added_embedding`` (the pooled outputs and the micro-conditioning of the image size, as the bundle
    runner computes it); an empty negative prompt is zeros when the model's config says so.

    Args:
        model: a ``StableDiffusion`` or ``StableDiffusionXL`` (its ``tokenizer``, ``config`` and Keras sub-models
            are used).
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

    if hasattr(model.config, "text_encoder_2"):
        return _record_sdxl(model, prompts=prompts, num_steps=num_steps, sampler=sampler,
                            guidance_scale=guidance_scale, seed=seed, image_size=image_size, images=images)

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


def _record_sdxl(model, *, prompts, num_steps, sampler, guidance_scale, seed, image_size, images):
    """``record_trajectories`` for an SDXL model: the export graphs' inputs (``unet_parts.export_unet``)."""
    from sd_keras import noise as noise_lib
    from sd_keras.export.runner import added_embedding, denoise
    from sd_keras.export.unet_parts import export_unet
    from sd_keras.schedulers import get_sampler

    config = model.config
    height, width = image_size or config.image_size
    factor = config.vae.downsample_factor
    latent_shape = (height // factor, width // factor, config.vae.latent_channels)
    scheduler = get_sampler(sampler, num_steps, prediction_type=config.prediction_type)
    unet = export_unet(model.diffusion_model)
    records = {"text_encoder": [], "text_encoder_2": [], "diffusion_model": [], "decoder": [], "image_encoder": []}
    time_ids = np.asarray([[height, width, 0, 0, height, width]], np.float32)
    encoders = [name for name in ("text_encoder", "text_encoder_2") if getattr(model, name, None) is not None]

    def encode(prompt):
        """(context (1, 77, D), added_embedding (1, A)) of one prompt."""
        width_total = config.unet.context_dim
        if prompt == "" and config.force_zeros_for_empty_prompt:
            pooled, context = np.zeros((1, config.unet.pooled_dim), np.float32), np.zeros((1, 77, width_total),
                                                                                          np.float32)
        else:
            ids = np.asarray(model.tokenize([prompt]), np.int32)
            hidden, pooled = [], None
            for name, tokens in zip(encoders, model._encoder_ids(ids)):
                feed = {"tokens": tokens, "positions": np.arange(tokens.shape[1], dtype=np.int32)[None]}
                records[name].append(feed)
                out = getattr(model, name).predict_on_batch(feed)
                if isinstance(out, dict):
                    hidden.append(np.asarray(out["hidden_states"], np.float32))
                    pooled = np.asarray(out["pooled"], np.float32)
                else:
                    hidden.append(np.asarray(out, np.float32))
            context = np.concatenate(hidden, axis=-1)
        return context, added_embedding(pooled, time_ids, config.unet.addition_time_embed_dim)

    def run_unet(latent, embedding, context, added):
        feed = {"latent": latent, "timestep_embedding": embedding, "context": context, "added_embedding": added}
        records["diffusion_model"].append({key: np.array(value, np.float32) for key, value in feed.items()})
        return np.asarray(unet.predict_on_batch(feed), np.float32)

    unconditional, unconditional_added = encode("")
    extra_draws = scheduler.num_steps if scheduler.needs_noise else 0
    for index, prompt in enumerate(prompts):
        context, added = encode(prompt)
        initial, step_noise = noise_lib.latent_noise(seed + index, 1, latent_shape, extra_draws)
        latent = denoise(scheduler, run_unet, context, unconditional, initial * np.float32(scheduler.init_noise_sigma),
                         step_noise, guidance_scale=guidance_scale, timestep_dim=config.unet.timestep_dim,
                         added=added, unconditional_added=unconditional_added)
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
