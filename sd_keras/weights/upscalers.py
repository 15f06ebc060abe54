"""Load ESRGAN / Real-ESRGAN upscaler files (``.pth`` and ``.safetensors``): architecture and scale from the tensors.

The file is read without running pickled code (``sd_keras.weights.pickle_reader``; ``params_ema`` / ``params``
wrappers of Real-ESRGAN's training files are unwrapped, ``params_ema`` first) or through ``safetensors``. The key
layout says the architecture:

=====================  ==================================================================================
layout                 keys
=====================  ==================================================================================
RRDBNet, new           ``conv_first``, ``body.N.rdbK.convJ``, ``conv_body``, ``conv_upI``, ``conv_hr``,
                       ``conv_last`` (Real-ESRGAN, basicsr)
RRDBNet, BSRGAN        ``conv_first``, ``RRDB_trunk.N.RDBK.convJ``, ``trunk_conv``, ``upconvI``, ``HRconv``,
                       ``conv_last`` (BSRGAN, RealSR)
RRDBNet, old ESRGAN    ``model.0``, ``model.1.sub.N.RDBK.convJ.0``, ``model.1.sub.<num_block>``, ``model.3``,
                       ``model.6``, ... (original ESRGAN, most community models such as 4x-UltraSharp)
SRVGGNetCompact        ``body.0``, ``body.1`` (PReLU), ... ``body.<2*num_conv+2>`` (realesr-general-x4v3,
                       realesr-animevideov3)
=====================  ==================================================================================

Sizes come from shapes: ``num_feat`` and input channels from the first convolution, ``num_block`` from the block
indices, ``num_grow_ch`` from a dense block's first convolution, the scale from the number of upsampling stages
(RRDBNet; a first convolution taking 4x or 16x the output channels marks Real-ESRGAN's pixel-unshuffled x2 / x1
models) or from the last convolution's width ``3 * scale**2`` (SRVGGNetCompact). Every tensor of the file must
be used and every weight of the model filled; anything else is an ``InputError`` naming what was found.

No upscaler weights ship with sd_keras (their licences and sizes vary): get them from Real-ESRGAN's GitHub
releases (https://github.com/xinntao/Real-ESRGAN/releases: RealESRGAN_x4plus.pth, RealESRGAN_x2plus.pth,
realesr-general-x4v3.pth, realesr-animevideov3.pth) or OpenModelDB (https://openmodeldb.info).

Example:
    >>> config, weights = read_upscaler("RealESRGAN_x4plus.pth")                   # doctest: +SKIP
    >>> config.architecture, config.scale, config.num_block                         # doctest: +SKIP
    ('rrdbnet', 4, 23)
    >>> model = load_upscaler("realesr-general-x4v3.pth")                           # doctest: +SKIP
"""

import math
import os
import re

import numpy as np

from sd_keras.errors import InputError
from sd_keras.models import registry
from sd_keras.models.upscalers import UpscalerConfig, build_upscaler
from sd_keras.weights.pickle_reader import CheckpointFormatError, UnsafeCheckpointError

WHERE_TO_GET = ("sd_keras ships no upscaler weights: get them from Real-ESRGAN's releases "
                "(https://github.com/xinntao/Real-ESRGAN/releases) or OpenModelDB (https://openmodeldb.info)")
SUFFIXES = (".pth", ".pt", ".safetensors")

__all__ = ["read_upscaler", "describe_upscaler", "load_upscaler", "canonical_names", "config_from_shapes", "WHERE_TO_GET", "SUFFIXES"]

_NEW_BLOCK = re.compile(r"body\.(\d+)\.rdb([123])\.conv([1-5])\.(weight|bias)$")
_BSRGAN_BLOCK = re.compile(r"RRDB_trunk\.(\d+)\.RDB([123])\.conv([1-5])\.(weight|bias)$")
_OLD_BLOCK = re.compile(r"model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)$")
_OLD_LAYER = re.compile(r"model\.(\d+)\.(weight|bias)$")
_OLD_BODY = re.compile(r"model\.1\.sub\.(\d+)\.(weight|bias)$")
_UP = re.compile(r"(?:conv_up|upconv)(\d)\.(weight|bias)$")
_COMPACT = re.compile(r"body\.(\d+)\.(weight|bias)$")
_RENAMED = {"trunk_conv": "conv_body", "HRconv": "conv_hr"}


def _describe(keys, count=4):
    keys = sorted(keys)
    more = f" and {len(keys) - count} more" if len(keys) > count else ""
    return ", ".join(keys[:count]) + more


def _old_esrgan_names(keys, path):
    """``model.*`` keys of an original ESRGAN file -> new-layout names."""
    blocks = {int(match.group(1)) for key in keys if (match := _OLD_BLOCK.match(key))}
    layers = sorted({int(match.group(1)) for key in keys if (match := _OLD_LAYER.match(key))})
    if not blocks or not layers or layers[0] != 0:
        raise InputError(f"{path}: ESRGAN 'model.*' keys without model.0 and RRDB blocks ({_describe(keys)})")
    num_block = max(blocks) + 1
    # model.0 conv, model.1 blocks + body conv, then (upsample, conv, lrelu) per stage, conv, lrelu, conv
    stages = (layers[-1] - 4) // 3
    names = {0: "conv_first", 3 * stages + 2: "conv_hr", 3 * stages + 4: "conv_last"}
    names.update({3 * stage: f"conv_up{stage}" for stage in range(1, stages + 1)})
    if set(layers) != set(names):
        raise InputError(f"{path}: ESRGAN layers model.{layers} do not form conv, blocks, upsampling stages, "
                         "conv, conv")
    renamed = {}
    for key in keys:
        if match := _OLD_BLOCK.match(key):
            block, dense, conv, kind = match.groups()
            renamed[key] = f"body.{block}.rdb{dense}.conv{conv}.{kind}"
        elif (match := _OLD_BODY.match(key)) and int(match.group(1)) == num_block:
            renamed[key] = f"conv_body.{match.group(2)}"
        elif match := _OLD_LAYER.match(key):
            renamed[key] = f"{names[int(match.group(1))]}.{match.group(2)}"
    return renamed


def canonical_names(keys, path="upscaler"):
    """``(architecture, {file key: new-layout key})`` for the keys of an upscaler file.

    Raises:
        InputError: the keys match no supported layout (names the keys found).
    """
    keys = [key[len("module."):] if key.startswith("module.") else key for key in keys]
    key_set = set(keys)
    if any(".conv1x1." in key for key in keys):
        raise InputError(f"{path}: an ESRGAN+ file (conv1x1 layers), which sd_keras does not support")
    if "model.0.weight" in key_set and any(_OLD_BLOCK.match(key) for key in keys):
        return "rrdbnet", _old_esrgan_names(keys, path)
    if "conv_first.weight" in key_set and any(_NEW_BLOCK.match(key) or _BSRGAN_BLOCK.match(key) for key in keys):
        renamed = {}
        for key in keys:
            if match := _BSRGAN_BLOCK.match(key):
                block, dense, conv, kind = match.groups()
                renamed[key] = f"body.{block}.rdb{dense}.conv{conv}.{kind}"
            elif match := _UP.match(key):
                renamed[key] = f"conv_up{match.group(1)}.{match.group(2)}"
            else:
                layer, _, kind = key.rpartition(".")
                renamed[key] = f"{_RENAMED.get(layer, layer)}.{kind}"
        return "rrdbnet", renamed
    if {"body.0.weight", "body.1.weight"} <= key_set and all(_COMPACT.match(key) for key in keys):
        return "srvgg", {key: key for key in keys}
    raise InputError(f"{path}: not an ESRGAN / Real-ESRGAN RRDBNet or SRVGGNetCompact file (found "
                     f"{len(keys)} tensors: {_describe(keys)}); {WHERE_TO_GET}")


def _shape(shapes, key, path):
    if key not in shapes:
        raise InputError(f"{path}: no tensor {key!r} (found {_describe(shapes)})")
    return shapes[key]


def config_from_shapes(architecture, shapes, path="upscaler"):
    """The ``UpscalerConfig`` of new-layout ``{key: shape}``.

    Raises:
        InputError: sizes that do not fit the architecture (names the tensor).
    """
    if architecture == "srvgg":
        last = max(int(_COMPACT.match(key).group(1)) for key in shapes)
        out_features, in_channels = _shape(shapes, "body.0.weight", path)[:2]
        width = _shape(shapes, f"body.{last}.weight", path)[0]
        scale = math.isqrt(width // in_channels) if width % in_channels == 0 else 0
        if scale < 1 or scale * scale * in_channels != width or last % 2:
            raise InputError(f"{path}: SRVGGNetCompact last convolution body.{last} has {width} outputs, not "
                             f"{in_channels} x scale^2")
        return UpscalerConfig("srvgg", scale=scale, in_channels=in_channels, out_channels=in_channels,
                              num_feat=out_features, num_conv=(last - 2) // 2)
    num_feat, in_channels = _shape(shapes, "conv_first.weight", path)[:2]
    out_channels = _shape(shapes, "conv_last.weight", path)[0]
    blocks = {int(match.group(1)) for key in shapes if (match := _NEW_BLOCK.match(key))}
    stages = {int(match.group(1)) for key in shapes if (match := _UP.match(key))}
    if stages != set(range(1, len(stages) + 1)) or not 1 <= len(stages) <= 3:
        raise InputError(f"{path}: RRDBNet upsampling convolutions {sorted(stages)}: expected 1, 2 or 3 stages")
    unshuffle = {1: 1, 4: 2, 16: 4}.get(in_channels // out_channels) if in_channels % out_channels == 0 else None
    body_scale = 2 ** len(stages)
    if unshuffle is None or body_scale % unshuffle:
        raise InputError(f"{path}: RRDBNet with {in_channels} input and {out_channels} output channels and "
                         f"{len(stages)} upsampling stages is not a supported layout")
    return UpscalerConfig("rrdbnet", scale=body_scale // unshuffle, in_channels=in_channels // unshuffle ** 2,
                          out_channels=out_channels, num_feat=num_feat, num_block=max(blocks) + 1,
                          num_grow_ch=_shape(shapes, "body.0.rdb1.conv1.weight", path)[0], unshuffle=unshuffle)


def _variable_name(key):
    """New-layout key -> Keras variable path: ``body.3.rdb2.conv4.weight`` -> ``body_3_rdb2_conv4/kernel``;
    a 1-D ``body.N.weight`` of SRVGGNetCompact is its PReLU's ``alpha``."""
    layer, _, kind = key.rpartition(".")
    return f"{layer.replace('.', '_')}/{'bias' if kind == 'bias' else 'kernel'}"


def _keras_array(array):
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 4:  # PyTorch conv (out, in, kh, kw) -> Keras (kh, kw, in, out)
        return array.transpose(2, 3, 1, 0)
    return array


def _open(path):
    from sd_keras.weights.checkpoints import open_tensor_file

    if not os.path.isfile(path):
        raise InputError(f"{path}: no such upscaler file; {WHERE_TO_GET}")
    try:
        return open_tensor_file(path)
    except (CheckpointFormatError, UnsafeCheckpointError) as error:
        raise InputError(f"{error}") from None


def _layout(reader, path):
    """``(config, {file key: new-layout key}, {new-layout key... : file key})`` from the keys and shapes alone."""
    keys = reader.keys()
    if not keys:
        raise InputError(f"{path}: holds no tensors; {WHERE_TO_GET}")
    architecture, names = canonical_names(keys, path)
    unused = set(keys) - {key for key in keys if (key[7:] if key.startswith("module.") else key) in names}
    if unused:
        raise InputError(f"{path}: {len(unused)} tensors fit no layer of the {architecture} layout "
                         f"({_describe(unused)})")
    original = {key[len("module."):] if key.startswith("module.") else key: key for key in keys}
    shapes = {names[key]: tuple(reader.shape(original[key])) for key in names}
    return config_from_shapes(architecture, shapes, path), names, original


def describe_upscaler(path):
    """The ``UpscalerConfig`` of an upscaler file, from its keys and shapes (no tensor is read).

    Raises:
        InputError: as ``read_upscaler``.
    """
    path = os.fspath(path)
    reader = _open(path)
    try:
        return _layout(reader, path)[0]
    finally:
        reader.close()


def read_upscaler(path):
    """``(UpscalerConfig, {Keras variable path: array})`` of an upscaler file.

    Raises:
        InputError: a missing, unreadable or unsafe file, or tensors of no supported layout (names what it found
            and where upscaler weights come from).
    """
    path = os.fspath(path)
    reader = _open(path)
    try:
        config, names, original = _layout(reader, path)
        architecture = config.architecture
        weights = {}
        for key, name in names.items():
            array = _keras_array(reader.read(original[key]))
            if architecture == "srvgg" and array.ndim == 1 and name.endswith(".weight"):
                weights[_variable_name(name).replace("/kernel", "/alpha")] = array.reshape(1, 1, -1)
            else:
                weights[_variable_name(name)] = array
    finally:
        reader.close()
    return config, weights


def load_upscaler(path, *, dtype=None):
    """The Keras upscaler model of ``path``, filled with its weights (``model.upscaler_config`` set).

    Raises:
        InputError: see ``read_upscaler``; also tensors that do not fit the detected model.
    """
    config, weights = read_upscaler(path)
    model = build_upscaler(config, dtype=dtype)
    registry.assign(model, weights, source=os.fspath(path))
    model.upscaler_config = config
    return model
