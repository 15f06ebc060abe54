"""``sd-keras convert PATH -o OUT``: a diffusers folder or original ``.safetensors`` / ``.ckpt`` to sd_keras's
saved format (load it with ``StableDiffusion.from_checkpoint(OUT)`` or ``sd-keras generate -m OUT``).

Also the reusable ``--lora FILE[:SCALE]`` option (repeatable): ``add_lora_argument(parser)`` adds it and
``apply_lora_arguments(model, args)`` merges the LoRAs into a loaded model; ``add_checkpoint_arguments(parser)``
adds ``--prediction-type`` and ``--ema`` (how a single-file checkpoint is read).

Example:
    $ sd-keras convert v1-5-pruned-emaonly.safetensors -o sd15
    $ sd-keras convert 512-base-ema.safetensors -o sd2base --prediction-type epsilon
    $ sd-keras convert sd-v1-4-full-ema.ckpt -o sd14_ema --ema
    $ sd-keras convert sd15 -o sd15_pixel --lora pixel_art.safetensors:0.8
"""

import os
import sys

from sd_keras.config import PREDICTION_TYPES


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
    """The ``(path, scale)`` pairs of ``args.lora``; ``ValueError`` naming a missing file."""
    from sd_keras.weights.lora import parse_lora_spec

    specs = [parse_lora_spec(spec) for spec in getattr(args, "lora", None) or []]
    for path, _ in specs:
        if not os.path.isfile(path):
            raise ValueError(f"--lora {path}: no such file")
    return specs


def apply_lora_arguments(model, args):
    """Merge every ``--lora`` of ``args`` into ``model`` (a StableDiffusion); returns the ``AppliedLoRA`` list.

    A model without Keras sub-models (an exported bundle) cannot take a LoRA: ``ValueError``.
    """
    specs = lora_specs(args)
    if not specs:
        return []
    if not hasattr(model, "diffusion_model") or not hasattr(model, "text_encoder"):
        raise ValueError("--lora needs a Keras model (a preset or checkpoint), not an exported bundle")
    from sd_keras.weights.lora import apply_lora

    return [apply_lora(model, path, scale) for path, scale in specs]


def cmd_convert(args):
    from sd_keras import files
    from sd_keras.weights import saved
    from sd_keras.weights.checkpoints import check_output_folder, convert_checkpoint, printing_notes

    if not os.path.exists(args.path):
        raise FileNotFoundError(f"{args.path}: no such checkpoint file or folder")
    if os.path.abspath(args.path) == os.path.abspath(args.output):
        raise ValueError("-o/--output must differ from the input checkpoint")
    check_output_folder(os.path.abspath(args.output))
    files.check_writable(args.output, folder=True)  # before minutes of reading (missing parents are created)
    loras = lora_specs(args)
    if saved.is_saved_folder(args.path):
        if args.ema or args.prediction_type:
            raise ValueError(f"{args.path}: an sd_keras saved model: --ema and --prediction-type apply to "
                             "checkpoints being converted")
        # already sd_keras's format: re-save (with LoRAs merged, or another weight dtype)
        from sd_keras.pipeline import StableDiffusion
        from sd_keras.weights.lora import apply_lora

        model = StableDiffusion.from_checkpoint(args.path)
        for path, scale in loras:
            apply_lora(model, path, scale)
        output = saved.save_pretrained(model, args.output, weight_dtype=args.weight_dtype)
    else:
        with printing_notes(sys.stderr):
            output = convert_checkpoint(args.path, args.output, prediction_type=args.prediction_type,
                                        weight_dtype=args.weight_dtype, loras=loras, ema=args.ema)
    config = saved.read_config(output)
    print(f"{output}: {config.name}: UNet {config.unet.block_out_channels} ({config.unet.in_channels} input "
          f"channels), text encoder width {config.text_encoder.width} x {config.text_encoder.num_layers} layers, "
          f"{config.prediction_type}, {config.image_size[1]}x{config.image_size[0]}", file=sys.stdout)
    return 0


def register(subparsers):
    parser = subparsers.add_parser(
        "convert", help="convert a diffusers folder or .safetensors/.ckpt checkpoint to sd_keras's format",
        description="Convert a Stable Diffusion 1.x/2.x checkpoint (diffusers folder, or an original single "
                    ".safetensors/.ckpt file) to sd_keras's saved format, usable as `generate -m OUT`.")
    parser.add_argument("path", help="diffusers folder, .safetensors or .ckpt file")
    parser.add_argument("-o", "--output", required=True,
                        help="output folder (replaced atomically; missing parent folders are created)")
    add_checkpoint_arguments(parser)
    parser.add_argument("--weight-dtype", choices=["float32", "float16"], default=None,
                        help="storage dtype of the written weights (default: float32)")
    add_lora_argument(parser)
    parser.set_defaults(func=cmd_convert)
