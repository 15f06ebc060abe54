"""``sd-keras convert PATH -o OUT``: a diffusers folder or original ``.safetensors`` / ``.ckpt`` to sd_keras's
saved format (load it with ``sd_keras.load(OUT)`` or ``sd-keras generate -m OUT``); ``--lora`` merges LoRAs.

Example:
    $ sd-keras convert v1-5-pruned-emaonly.safetensors -o sd15
    $ sd-keras convert 512-base-ema.safetensors -o sd2base --prediction-type epsilon
    $ sd-keras convert sd-v1-4-full-ema.ckpt -o sd14_ema --ema
    $ sd-keras convert sd15 -o sd15_pixel --lora pixel_art.safetensors:0.8
"""

import os
import sys

from sd_keras.cli.arguments import add_checkpoint_arguments, add_lora_argument, lora_specs
from sd_keras.errors import InputError


def cmd_convert(args):
    from sd_keras import files
    from sd_keras.weights import saved
    from sd_keras.weights.checkpoints import check_output_folder, convert_checkpoint, printing_notes

    if not os.path.exists(args.path):
        raise InputError(f"{args.path}: no such checkpoint file or folder")
    if os.path.abspath(args.path) == os.path.abspath(args.output):
        raise InputError("-o/--output must differ from the input checkpoint")
    check_output_folder(os.path.abspath(args.output))
    files.check_writable(args.output, folder=True)  # before minutes of reading (missing parents are created)
    loras = lora_specs(args)
    if saved.is_saved_folder(args.path):
        if args.ema or args.prediction_type:
            raise InputError(f"{args.path}: an sd_keras saved model: --ema and --prediction-type apply to "
                             "checkpoints being converted")
        # already sd_keras's format: re-save (with LoRAs merged, or another weight dtype)
        import sd_keras
        from sd_keras.weights.lora import apply_lora

        model = sd_keras.load(args.path)
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
    """Add ``convert`` to the ``sd-keras`` command line."""
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
    return parser
