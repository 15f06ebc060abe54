"""The UNet as a chain of parts, for converters that cannot hold the whole model at once.

TensorFlow's TFLite converter peaks at several times a model's float32 weight bytes (the SD 1.x UNet, 3.4 GB,
does not convert in 16 GB). ``plan_parts`` cuts the UNet's block sequence (``unet_steps``) into consecutive parts
of at most ``max_bytes`` of weights each; every part becomes its own ``.tflite`` file with a named signature. The
blocks are the ones ``build_diffusion_model`` records while it builds the UNet (``sd_keras.models.unet.UNetBlock``),
so the parts follow the builder; this module only knows how each kind of block runs.
Tensors cross part boundaries by name: ``h`` (the running activation), ``temb`` (the projected timestep
embedding, made by part 0), ``context`` (the model input) and ``skip_NN`` (the skip connections, numbered in the
order the down path makes them; the up path takes them from the end). A part's inputs are what it reads, its
outputs what later parts read; the last part's output is the whole model's (``model_output``). A part that ends
on a down-path step, which keeps ``h`` as its newest skip, passes ``h`` on under that skip's name only: one tensor
under two output names is listed under just one of them by LiteRT's ``CompiledModel`` (the Android app's API).
Runners keep one dict of named tensors and run the parts in order (``ChainedComponent``), exactly what the Android
app does.

An SDXL UNet (added conditioning) runs from ``added_embedding``, a fourth input of the chain: the pooled text
embedding and the time ids' sinusoids already concatenated by the host (``export/BUNDLE.md``, "SDXL bundles").
The stem runs the add-embedding MLP on it and adds it to the time embedding; ``export_unet`` gives that UNet as a
Keras model of the same layers (what the bundle's ``diffusion_model`` computes).

Example:
    >>> from sd_keras.models import build_diffusion_model
    >>> unet = build_diffusion_model("tiny")
    >>> steps = unet_steps(unet)
    >>> steps[0].name, steps[-1].name
    ('stem', 'head')
"""

from typing import Callable, List, NamedTuple

import numpy as np

WHOLE_INPUTS = ("latent", "timestep_embedding", "context")
ADDED_INPUT = "added_embedding"
OUTPUT = "model_output"
# the SDXL stem's layers that make ``added_embedding`` from (text_embeds, time_ids): the host does that instead
HOST_LAYERS = ("add_time_proj", "add_concat")


class Step(NamedTuple):
    name: str
    layers: List[str]            # layer names whose weights the step uses
    skips_after: int             # number of live skip tensors after the step
    run: Callable                # state dict -> state dict


def _stem(layer, names):
    if "add_embedding_1" in names:
        return _added_stem(layer, names)
    te1, act, te2, conv_in = (layer(name) for name in names)

    def run(state):
        temb = te2(act(te1(state["timestep_embedding"])))
        h = conv_in(state["latent"])
        return {"h": h, "temb": temb, "context": state["context"], "skips": [h]}
    return run


def _added_stem(layer, names):
    """The SDXL stem from ``added_embedding`` (the add-embedding MLP's input) instead of (text_embeds, time_ids)."""
    te1, act, te2, ae1, ae_act, ae2, add, conv_in = (layer(name) for name in names if name not in HOST_LAYERS)

    def run(state):
        temb = te2(act(te1(state["timestep_embedding"])))
        temb = add([temb, ae2(ae_act(ae1(state[ADDED_INPUT])))])
        h = conv_in(state["latent"])
        return {"h": h, "temb": temb, "context": state["context"], "skips": [h]}
    return run


def _down(layer, names):
    res, attn = layer(names[0]), (layer(names[1]) if len(names) > 1 else None)

    def run(state):
        h = res(state["h"], state["temb"])
        if attn is not None:
            h = attn(h, state["context"])
        return {**state, "h": h, "skips": list(state["skips"]) + [h]}
    return run


def _downsample(layer, names):
    pad, conv = (layer(name) for name in names)

    def run(state):
        h = conv(pad(state["h"]))
        return {**state, "h": h, "skips": list(state["skips"]) + [h]}
    return run


def _mid(layer, names):
    res_0, attn, res_1 = (layer(name) for name in names)

    def run(state):
        h = attn(res_0(state["h"], state["temb"]), state["context"])
        return {**state, "h": res_1(h, state["temb"])}
    return run


def _up(layer, names):
    concat, res, attn = layer(names[0]), layer(names[1]), (layer(names[2]) if len(names) > 2 else None)

    def run(state):
        skips = list(state["skips"])
        h = res(concat([state["h"], skips.pop()]), state["temb"])
        if attn is not None:
            h = attn(h, state["context"])
        return {**state, "h": h, "skips": skips}
    return run


def _upsample(layer, names):
    nearest, conv = (layer(name) for name in names)

    def run(state):
        return {**state, "h": conv(nearest(state["h"]))}
    return run


def _head(layer, names):
    norm, act, conv = (layer(name) for name in names)

    def run(state):
        return {OUTPUT: conv(act(norm(state["h"])))}
    return run


# how each kind of block the UNet builder records runs, and how it changes the number of live skip tensors
_KINDS = {"stem": (_stem, lambda skips: 1), "down": (_down, lambda skips: skips + 1),
          "downsample": (_downsample, lambda skips: skips + 1), "mid": (_mid, lambda skips: skips),
          "up": (_up, lambda skips: skips - 1), "upsample": (_upsample, lambda skips: skips),
          "head": (_head, lambda skips: 0)}


def unet_steps(model, cfg=None):
    """The UNet as a list of ``Step``: the blocks ``build_diffusion_model`` recorded while building ``model``
    (``sd_keras.models.unet.unet_layout``), same layers, same order. ``cfg`` is not needed (kept for callers).

    Raises ValueError for a model the builder did not make, a block kind this module cannot run, or a layout that
    leaves a weighted layer out (every weight must belong to exactly one step)."""
    from sd_keras.models.unet import unet_layout

    layer = model.get_layer
    steps, skips = [], 0
    for block in unet_layout(model):
        if block.kind not in _KINDS:
            raise ValueError(f"UNet parts: the builder made a {block.kind!r} block ({block.name}), which this "
                             "module cannot run")
        make_runner, count_skips = _KINDS[block.kind]
        skips = count_skips(skips)
        weighted = [name for name in block.layers if name not in HOST_LAYERS and layer(name).weights]
        steps.append(Step(block.name, weighted, skips, make_runner(layer, block.layers)))
    covered = {name for step in steps for name in step.layers}
    left_out = [item.name for item in model.layers if item.weights and item.name not in covered]
    if left_out:
        raise ValueError(f"UNet parts: the block layout leaves out the weighted layers {left_out[:3]}")
    return steps


def whole_inputs(steps):
    """The chain's inputs: ``WHOLE_INPUTS``, plus ``added_embedding`` for a UNet with added conditioning."""
    return WHOLE_INPUTS + ((ADDED_INPUT,) if "add_embedding_1" in steps[0].layers else ())


def export_unet(model):
    """The UNet as the bundle's ``diffusion_model`` computes it, a Keras model of ``model``'s own layers (shared
    weights): ``model`` itself for a UNet without added conditioning; for SDXL, inputs ``latent``,
    ``timestep_embedding``, ``context`` and ``added_embedding`` (B, pooled_dim + num_time_ids *
    addition_time_embed_dim), the concatenation the stem's ``add_concat`` makes (``sd_keras.export.runner
    .added_embedding`` computes it on the host)."""
    import keras

    from sd_keras.models.unet import UNetBlock, unet_layout

    if "add_embedding_1" not in [layer.name for layer in model.layers]:
        return model
    steps = unet_steps(model)
    parts = [(0, len(steps))]
    interface = part_interfaces(steps, parts)[0]
    width = int(model.get_layer("add_embedding_1").weights[0].shape[0])
    inputs = {name: keras.Input(tuple(model.input[name].shape[1:]), name=name) for name in WHOLE_INPUTS}
    inputs[ADDED_INPUT] = keras.Input((width,), name=ADDED_INPUT)
    output = run_part(steps, parts[0], interface, inputs)[OUTPUT]
    wrapped = keras.Model(inputs, output, name=model.name)
    layout = tuple(UNetBlock(block.kind, block.name, tuple(n for n in block.layers if n not in HOST_LAYERS))
                   for block in unet_layout(model))
    object.__setattr__(wrapped, "sd_keras_layout", layout)  # plain attributes: not tracked by Keras
    object.__setattr__(wrapped, "sd_keras_export_of", model)
    return wrapped


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
            inputs = list(whole_inputs(steps))
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
        state = {name: values[name] for name in whole_inputs(steps)}
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

    values = {name: ops.convert_to_tensor(np.asarray(feed[name], np.float32)) for name in whole_inputs(steps)}
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
