"""Options and checks that several ``sd-keras`` commands share.

- ``-o`` patterns of images (``check_output_paths``), checked writable before the model is loaded;
- ``--lora FILE[:SCALE]`` (repeatable; ``add_lora_argument``, ``lora_specs``, ``apply_lora_arguments``);
- ``--prompt-syntax`` / ``--lora-dir``, how prompts are read and where ``<lora:name:weight>`` tags find their files
  (``add_prompt_syntax_arguments``, ``check_prompts``, ``prompt_syntax_of``);
- ``--prediction-type`` / ``--ema``, how a single-file checkpoint is read (``add_checkpoint_arguments``);
- ``-m`` model specs, checked without loading (``check_model_spec``; ``sd_keras.loading.spec_kind``).

Bad input raises ``sd_keras.errors.InputError`` naming the option. Nothing here imports Keras or numpy.
"""

import os

from sd_keras.config import PREDICTION_TYPES
from sd_keras.errors import InputError


def check_output_paths(pattern, count):
    """The ``count`` PNG paths of ``-o`` (``sd_keras.images.output_paths``' rules), each checked writable now
    (before the model is loaded); InputError naming the pattern. Missing parent folders are fine: they are
    created when the images are written."""
    from sd_keras import files
    from sd_keras.images import output_paths

    try:
        paths = output_paths(pattern, count)
    except ValueError as error:
        raise InputError(f"-o {pattern}: not a valid file name pattern ({error}); use one %d for the image index, "
                         f"e.g. out_%d.png, and %% for a literal %") from None
    for path in paths:
        try:
            files.check_writable(path)
        except ValueError as error:
            raise InputError(str(error) if path == pattern else f"-o {pattern}: {error}") from None
    return paths


def check_model_spec(spec, *, prediction_type=None, ema=False):
    """``"preset"``, ``"checkpoint"`` or ``"bundle"`` for ``-m spec`` (nothing is loaded); InputError naming the
    presets for an unknown spec, or for ``--prediction-type`` / ``--ema`` with a preset or bundle."""
    from sd_keras.loading import spec_kind

    return spec_kind(spec, prediction_type=prediction_type, ema=ema)


def add_lora_argument(parser):
    """Add ``--lora FILE[:SCALE]`` (repeatable; scale 1.0 when omitted) to an argparse parser."""
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                        help="merge a LoRA (.safetensors; diffusers/PEFT or kohya format) with an optional scale; "
                             "repeatable")


def add_checkpoint_arguments(parser):
    """Add ``--prediction-type`` and ``--ema`` (for single-file checkpoints) to an argparse parser."""
    parser.add_argument("--prediction-type", choices=PREDICTION_TYPES, default=None,
                        help="what the UNet predicts (default: a diffusers folder's scheduler config; for a single "
                             "file inferred as diffusers does: v_prediction for SD 2.x unless its global_step is "
                             "875000, else epsilon; use epsilon for an SD 2.x 512 base .safetensors)")
    parser.add_argument("--ema", action="store_true",
                        help="load a single file's EMA UNet weights (model_ema.*) instead of its non-EMA ones "
                             "(by default a file with both loads the non-EMA ones, a file with only EMA weights "
                             "those)")


def lora_specs(args):
    """The ``(path, scale)`` pairs of ``args.lora``; InputError naming a missing file."""
    from sd_keras.weights.lora import parse_lora_spec

    specs = [parse_lora_spec(spec) for spec in getattr(args, "lora", None) or []]
    for path, _ in specs:
        if not os.path.isfile(path):
            raise InputError(f"--lora {path}: no such file")
    return specs


def check_lora_target(args, kind):
    """InputError when ``--lora`` is given for a model of ``kind`` that cannot take one (an exported bundle)."""
    if getattr(args, "lora", None) and kind == "bundle":
        raise InputError("--lora needs a Keras model (a preset or checkpoint), not an exported bundle")


def apply_lora_arguments(model, args):
    """Merge every ``--lora`` of ``args`` into ``model`` (a StableDiffusion); returns the ``AppliedLoRA`` list."""
    specs = lora_specs(args)
    if not specs:
        return []
    from sd_keras.weights.lora import apply_lora

    return [apply_lora(model, path, scale) for path, scale in specs]


PROMPT_SYNTAX_CHOICES = ("a1111", "plain")


def add_prompt_syntax_arguments(parser, default):
    """Add ``--prompt-syntax {a1111,plain}`` (``default``: the front end's, ``sd_keras.defaults``) and
    ``--lora-dir DIR`` to an argparse parser."""
    parser.add_argument("--prompt-syntax", choices=PROMPT_SYNTAX_CHOICES, default=default,
                        help="a1111: AUTOMATIC1111's (word:1.2), (word), [word], BREAK and <lora:name:weight>, and "
                             "prompts over 75 tokens read in 75-token chunks; plain: the text as written, cut at 75 "
                             "tokens (the Python API's default) (default: %(default)s)")
    parser.add_argument("--lora-dir", metavar="DIR",
                        help="folder of the LoRA files that <lora:name:weight> in a prompt names (name.safetensors, "
                             ".ckpt or .pt, read as --lora reads them)")


def prompt_syntax_of(args):
    """The model's ``prompt_syntax`` for ``--prompt-syntax`` (None for plain text)."""
    return None if getattr(args, "prompt_syntax", "plain") == "plain" else args.prompt_syntax


def check_lora_dir(args):
    """InputError when ``--lora-dir`` is given and is not a folder."""
    folder = getattr(args, "lora_dir", None)
    if folder is not None and not os.path.isdir(folder):
        raise InputError(f"--lora-dir {folder}: no such folder")


def check_prompts(args, prompts, negative_prompts=(), kind=None):
    """Read ``prompts`` with ``--prompt-syntax`` before anything is loaded: InputError for syntax that cannot be
    read, a ``<lora:...>`` tag in a negative prompt, a tag naming no file of ``--lora-dir`` (the message lists its
    LoRAs), or tags for an exported bundle (``kind``)."""
    check_lora_dir(args)
    if prompt_syntax_of(args) is None:
        return
    from sd_keras.prompt_syntax import parse_prompt
    from sd_keras.prompts import find_lora

    for prompt in negative_prompts:
        if parse_prompt(prompt).loras:
            raise InputError("negative prompt: <lora:...> tags are read from the prompt only")
    for prompt in prompts:
        loras = parse_prompt(prompt).loras
        if loras and kind == "bundle":
            raise InputError("prompt: <lora:...> tags need a Keras model (a preset or checkpoint), not an exported "
                             "bundle")
        for lora in loras:
            find_lora(lora.name, getattr(args, "lora_dir", None))
