"""The UNet as a chain of parts, for converters that cannot hold the whole model at once.

TensorFlow's TFLite converter peaks at several times a model's float32 weight bytes (the SD 1.x UNet, 3.4 GB,
does not convert in 16 GB). ``plan_parts`` cuts the UNet's block sequence (``unet_steps``) into consecutive parts
of at most ``max_bytes`` of weights each; every part becomes its own ``.tflite`` file with a named signature.
Tensors cross part boundaries by name: ``h`` (the running activation), ``temb`` (the projected timestep
embedding, made by part 0), ``context`` (the model input) and ``skip_NN`` (the skip connections, numbered in the
order the down path makes them; the up path takes them from the end). A part's inputs are what it reads, its
outputs what later parts read; the last part's output is the whole model's (``model_output``). A part that ends
on a down-path step, which keeps ``h`` as its newest skip, passes ``h`` on under that skip's name only: one tensor
under two output names is listed under just one of them by LiteRT's ``CompiledModel`` (the Android app's API).
Runners keep one dict of named tensors and run the parts in order (``ChainedComponent``), exactly what the Android
app does.

Example:
    >>> from sd_keras.models import build_diffusion_model
    >>> from sd_keras.config import get_config
    >>> unet = build_diffusion_model("tiny")
    >>> steps = unet_steps(unet, get_config("tiny").unet)
    >>> steps[0].name, steps[-1].name
    ('stem', 'head')
"""

from typing import Callable, List, NamedTuple

import numpy as np

WHOLE_INPUTS = ("latent", "timestep_embedding", "context")
OUTPUT = "model_output"


class Step(NamedTuple):
    name: str
    layers: List[str]            # layer names whose weights the step uses
    skips_after: int             # number of live skip tensors after the step
    run: Callable                # state dict -> state dict


def unet_steps(model, cfg):
    """The UNet built by ``build_diffusion_model`` as a list of ``Step`` (same layers, same order)."""
    layer = model.get_layer
    steps = []

    def stem(state):
        temb = layer("time_embedding_1")(state["timestep_embedding"])
        temb = layer("time_embedding_2")(layer("time_embedding_act")(temb))
        h = layer("conv_in")(state["latent"])
        return {"h": h, "temb": temb, "context": state["context"], "skips": [h]}

    steps.append(Step("stem", ["time_embedding_1", "time_embedding_2", "conv_in"], 1, stem))
    skips = 1
    channels = cfg.block_out_channels
    last = len(channels) - 1

    def block(res_name, attn_name, concat_name=None):
        def run(state):
            h, skips_now = state["h"], list(state["skips"])
            if concat_name is not None:
                h = layer(concat_name)([h, skips_now.pop()])
            h = layer(res_name)(h, state["temb"])
            if attn_name is not None:
                h = layer(attn_name)(h, state["context"])
            if concat_name is None:
                skips_now.append(h)
            return {**state, "h": h, "skips": skips_now}
        return run

    for level in range(len(channels)):
        attention = cfg.attention_levels[level]
        for i in range(cfg.layers_per_block):
            names = [f"down_{level}_res_{i}"] + ([f"down_{level}_attn_{i}"] if attention else [])
            skips += 1
            steps.append(Step(names[0], names, skips, block(names[0], names[1] if attention else None)))
        if level < last:
            def downsample(state, level=level):
                h = layer(f"down_{level}_downsample")(layer(f"down_{level}_downsample_pad")(state["h"]))
                return {**state, "h": h, "skips": list(state["skips"]) + [h]}
            skips += 1
            steps.append(Step(f"down_{level}_downsample", [f"down_{level}_downsample"], skips, downsample))

    def mid(state):
        h = layer("mid_res_0")(state["h"], state["temb"])
        h = layer("mid_attn")(h, state["context"])
        return {**state, "h": layer("mid_res_1")(h, state["temb"])}

    steps.append(Step("mid", ["mid_res_0", "mid_attn", "mid_res_1"], skips, mid))
    for up, level in enumerate(reversed(range(len(channels)))):
        attention = cfg.attention_levels[level]
        for i in range(cfg.layers_per_block + 1):
            names = [f"up_{up}_res_{i}"] + ([f"up_{up}_attn_{i}"] if attention else [])
            skips -= 1
            steps.append(Step(names[0], names, skips,
                              block(names[0], names[1] if attention else None, f"up_{up}_concat_{i}")))
        if level > 0:
            def upsample(state, up=up):
                h = layer(f"up_{up}_upsample")(layer(f"up_{up}_upsample_nearest")(state["h"]))
                return {**state, "h": h}
            steps.append(Step(f"up_{up}_upsample", [f"up_{up}_upsample"], skips, upsample))

    def head(state):
        h = layer("act_out")(layer("norm_out")(state["h"]))
        return {OUTPUT: layer("conv_out")(h)}

    steps.append(Step("head", ["norm_out", "conv_out"], 0, head))
    return steps


def step_bytes(model, step):
    """float32 bytes of the weights a step uses."""
    return sum(int(np.prod(w.shape)) * 4 for name in step.layers for w in model.get_layer(name).weights)


def plan_parts(model, steps, max_bytes):
    """Consecutive ``(start, stop)`` step ranges with at most ``max_bytes`` of weights each (a single step
    heavier than that is a part of its own)."""
    parts, start, size = [], 0, 0
    for index, step in enumerate(steps):
        weight = step_bytes(model, step)
        if index > start and size + weight > max_bytes:
            parts.append((start, index))
            start, size = index, 0
        size += weight
    parts.append((start, len(steps)))
    return parts


def _skip_name(index):
    return f"skip_{index:02d}"


def _skips_before(steps, index):
    return steps[index - 1].skips_after if index else 0


def _h_is_newest_skip(steps, stop):
    """True when the step before ``stop`` kept ``h`` as a new skip (the stem, each down-path block): then ``h`` and
    that skip are one tensor."""
    return steps[stop - 1].skips_after > _skips_before(steps, stop - 1)


def part_interfaces(steps, parts):
    """For each part: (input names, output names) of the named-tensor chain; no tensor is named twice."""
    interfaces = []
    for number, (start, stop) in enumerate(parts):
        before = _skips_before(steps, start)
        lowest = min([before] + [steps[i].skips_after for i in range(start, stop)])
        after = steps[stop - 1].skips_after
        if number == 0:
            inputs = list(WHOLE_INPUTS)
        elif _h_is_newest_skip(steps, start):
            inputs = ["temb", "context"] + [_skip_name(i) for i in range(min(lowest, before - 1), before)]
        else:
            inputs = ["h", "temb", "context"] + [_skip_name(i) for i in range(lowest, before)]
        if stop == len(steps):
            outputs = [OUTPUT]
        else:
            outputs = ((["h"] if not _h_is_newest_skip(steps, stop) else []) + (["temb"] if number == 0 else [])
                       + [_skip_name(i) for i in range(lowest, after)])
        interfaces.append((inputs, outputs))
    return interfaces


def run_part(steps, part, interface, values):
    """Run one part on ``values`` (a dict of named tensors, backend tensors or arrays); its outputs by name."""
    (start, stop), (inputs, outputs) = part, interface
    if start == 0:
        state = {name: values[name] for name in WHOLE_INPUTS}
    else:
        before = _skips_before(steps, start)
        skips = [values.get(_skip_name(i)) for i in range(before)]  # only the ones this part pops are read
        h = values["h"] if "h" in inputs else values[_skip_name(before - 1)]
        state = {"h": h, "temb": values["temb"], "context": values["context"], "skips": skips}
    for step in steps[start:stop]:
        state = step.run(state)
    result = {}
    for name in outputs:
        result[name] = state["skips"][int(name[5:])] if name.startswith("skip_") else state[name]
    return result


def part_function(steps, part, interface):
    """A function with the part's input names as parameters returning ``{output name: tensor}`` (for
    ``tf.function``, whose signature input names come from the parameter names)."""
    import inspect

    names = interface[0]

    def serve(*args):
        return run_part(steps, part, interface, dict(zip(names, args)))

    serve.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names])
    return serve


def trace_values(steps, parts, interfaces, feed):
    """Every named tensor of the chain for one whole-model feed (numpy in, numpy out): per part, the dict of
    its inputs (its representative data) and the dict of its outputs (the last one holds ``model_output``)."""
    from keras import ops

    values = {name: ops.convert_to_tensor(np.asarray(feed[name], np.float32)) for name in WHOLE_INPUTS}
    inputs, outputs = [], []
    for part, interface in zip(parts, interfaces):
        inputs.append({name: np.asarray(ops.convert_to_numpy(values[name])) for name in interface[0]})
        produced = run_part(steps, part, interface, values)
        outputs.append({name: np.asarray(ops.convert_to_numpy(value)) for name, value in produced.items()})
        values.update(produced)
    return inputs, outputs


def part_layers(steps, part):
    start, stop = part
    return [name for step in steps[start:stop] for name in step.layers]


class ChainedComponent:
    """Run a component whose manifest entry lists ``parts``: one LiteRT signature runner per part file, tensors
    passed on by name. ``__call__(**inputs)`` returns the last part's outputs (a dict)."""

    def __init__(self, folder, parts, num_threads=None):
        import os

        from ai_edge_litert.interpreter import Interpreter

        self.parts = []
        for part in parts:
            interpreter = Interpreter(model_path=os.path.join(folder, part["file"]), num_threads=num_threads)
            signatures = interpreter.get_signature_list()
            if part["signature"] not in signatures:
                raise ValueError(f"{part['file']}: signature {part['signature']!r} not in the model "
                                 f"(it has {', '.join(signatures)})")
            self.parts.append((interpreter.get_signature_runner(part["signature"]), part))

    def __call__(self, **inputs):
        values = dict(inputs)
        outputs = {}
        for runner, part in self.parts:
            feed = {spec["name"]: np.asarray(values[spec["name"]], spec["dtype"]) for spec in part["inputs"]}
            outputs = runner(**feed)
            values.update(outputs)
        return outputs
