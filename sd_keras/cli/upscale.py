"""``sd-keras upscale IMAGE [IMAGE...] -m MODEL -s SCALE -o OUT``: enlarge images with an AI upscaler or Lanczos.

``-m`` is an ESRGAN / Real-ESRGAN RRDBNet or SRVGGNetCompact file (``.pth`` / ``.safetensors``; architecture and
scale read from its tensors; none ship with sd_keras) or a built-in resampler name, ``Lanczos`` or ``Nearest``.
Each output PNG keeps the input's text chunks (the ``parameters`` of a generated image) and gains A1111's
``postprocessing`` chunk (``Postprocess upscale by: 4, Postprocess upscaler: <name>``); files are written
atomically. ``-o`` follows ``generate``'s rules: one image to the path, several to ``<stem>_<index>.png``, or a
``%d`` pattern.
"""

import os
import sys

from sd_keras.errors import InputError

DEFAULT_OUTPUT = "upscaled.png"


def _read(path):
    import numpy as np

    from sd_keras.image_file import ImageFileError, open_image

    try:
        with open_image(path) as image:
            texts = {key: value for key, value in getattr(image, "text", {}).items()
                     if key != "postprocessing" and isinstance(value, str)}
            return np.asarray(image.convert("RGB")), texts
    except ImageFileError as error:
        raise InputError(str(error)) from None


def cmd_upscale(args):
    from sd_keras.cli.arguments import check_output_paths
    from sd_keras.upscale import BUILTIN, MAX_SCALE

    for path in args.images:
        if not os.path.isfile(path):
            raise InputError(f"{path}: no such image file")
    if args.model not in BUILTIN and not os.path.isfile(args.model):
        from sd_keras.weights.upscalers import WHERE_TO_GET

        raise InputError(f"-m {args.model}: neither an upscaler file nor one of {', '.join(BUILTIN)}; "
                         f"{WHERE_TO_GET}")
    if args.scale is not None and not 0 < args.scale <= MAX_SCALE:
        raise InputError(f"-s {args.scale:g}: must be above 0 and at most {MAX_SCALE}")
    if args.tile < 0 or (args.tile and not 0 <= args.overlap < args.tile):
        raise InputError(f"--tile {args.tile} / --overlap {args.overlap}: the tile must be positive (0: no "
                         "tiling) and the overlap from 0 to tile - 1")
    outputs = check_output_paths(args.output, len(args.images))

    from sd_keras.upscale import postprocessing_info, save_png, upscale, upscaler_scale

    model = args.model
    name = model
    if model not in BUILTIN:
        from sd_keras.weights.upscalers import load_upscaler

        model = load_upscaler(args.model)
        name = os.path.splitext(os.path.basename(args.model))[0]
    scale = args.scale or upscaler_scale(model) or 4
    for source, target in zip(args.images, outputs):
        image, texts = _read(source)
        result = upscale(image, model, scale, tile=args.tile, overlap=args.overlap)
        texts["postprocessing"] = postprocessing_info(name, scale)
        save_png(result, target, texts)
        print(f"{source} ({image.shape[1]}x{image.shape[0]}) -> {target} ({result.shape[1]}x{result.shape[0]})")
    return 0


def cmd_export_upscaler(args):
    from sd_keras.cli.arguments import check_output_paths

    if not os.path.isfile(args.model):
        from sd_keras.weights.upscalers import WHERE_TO_GET

        raise InputError(f"-m {args.model}: no such upscaler file; {WHERE_TO_GET}")
    check_output_paths(os.path.join(args.output, "upscaler.json"), 1)

    from sd_keras.export.bundle import ExportError
    from sd_keras.export.upscaler import export_upscaler

    try:
        report = export_upscaler(args.model, args.output, modes=args.quantize, tile=args.tile,
                                 overlap=args.overlap)
    except ExportError as error:
        print(f"sd-keras: export failed: {error}", file=sys.stderr)
        return 1
    for mode, measured in report["parity"].items():
        print(f"{mode}: {os.path.join(args.output, report['files'][mode])}  PSNR {measured['psnr_db']:.1f} dB, "
              f"max difference {measured['max_abs_diff']} levels (vs Keras on {report['tile']}-pixel tiles)")
    return 0


def register(subparsers):
    """Add ``upscale`` and ``export-upscaler`` to the ``sd-keras`` command line."""
    register_export(subparsers)
    from sd_keras.upscale import BUILTIN, DEFAULT_OVERLAP, DEFAULT_TILE

    parser = subparsers.add_parser(
        "upscale", help="enlarge images with an ESRGAN / Real-ESRGAN upscaler file or Lanczos",
        description="Enlarge images with an ESRGAN / Real-ESRGAN (RRDBNet) or compact (SRVGGNet) upscaler file, "
                    "run tile by tile, or with a built-in resampler. No upscaler weights ship with sd_keras: "
                    "get them from Real-ESRGAN's GitHub releases or OpenModelDB (openmodeldb.info).")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="input images (PNG, JPEG, ...)")
    parser.add_argument("-m", "--model", required=True,
                        help=f"upscaler file (.pth / .safetensors) or one of: {', '.join(BUILTIN)}")
    parser.add_argument("-s", "--scale", type=float, default=None,
                        help="output size / input size (default: the model's own factor; 4 for a resampler); "
                             "another factor than the model's runs the model, then resizes with Lanczos")
    parser.add_argument("-o", "--output", default=DEFAULT_OUTPUT,
                        help=f"output PNG or pattern (default {DEFAULT_OUTPUT}; several images: "
                             "<stem>_<index>.png, or use %%d)")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE,
                        help=f"tile size in input pixels (default {DEFAULT_TILE}; memory grows with it, not with "
                             "the image; 0: whole image at once)")
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP,
                        help=f"pixels neighbouring tiles share, blended (default {DEFAULT_OVERLAP})")
    parser.set_defaults(func=cmd_upscale)
    return parser


def register_export(subparsers):
    """Add ``export-upscaler``: an upscaler file to LiteRT files for phones (``sd_keras.export.upscaler``)."""
    from sd_keras.upscale import DEFAULT_OVERLAP

    parser = subparsers.add_parser(
        "export-upscaler", help="an upscaler file to LiteRT (.tflite, fp16 / int8) for phones, parity-gated",
        description="Export an upscaler file (the compact SRVGGNet suits phones) to LiteRT on fixed tiles. Each "
                    "file runs against Keras on test tiles and is written only if it passes: fp16 PSNR >= 45 dB "
                    "and no level off by more than 4, int8 PSNR >= 30 dB.")
    parser.add_argument("-m", "--model", required=True, help="upscaler file (.pth / .safetensors)")
    parser.add_argument("-o", "--output", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--quantize", action="append", choices=("fp16", "int8"),
                        help="mode; repeat for several (default: fp16 and int8)")
    parser.add_argument("--tile", type=int, default=128, help="input tile size of the exported model (default 128)")
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP // 2,
                        help="pixels neighbouring tiles share, recorded for the app (default 16)")
    parser.set_defaults(func=lambda args: cmd_export_upscaler(_with_default_modes(args)))
    return parser


def _with_default_modes(args):
    args.quantize = args.quantize or ["fp16", "int8"]
    return args
