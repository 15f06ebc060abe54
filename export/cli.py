"""``sd-keras export``: a model to a verified LiteRT bundle (and ``sd-keras golden`` when that module exists).

Example:
    sd-keras export -m tiny -o bundles/tiny-int8 --quantize int8 --size 64x64
"""

import importlib
import sys


def _parse_size(text):
    """``WIDTHxHEIGHT`` (as ``generate``'s ``Size:`` metadata writes it) -> (height, width)."""
    from sd_keras.pipeline import check_size

    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise ValueError(f"--size must be WIDTHxHEIGHT such as 512x512, got {text!r}")
    width, height = (int(part) for part in parts)
    check_size(height, width)
    return height, width


def cmd_export(args):
    from sd_keras.cli import CliError, load_model
    from sd_keras.export import quantize
    from sd_keras.export.bundle import check_destination, export_bundle
    from sd_keras.export.litert import ExportError

    quantize.check_mode(args.quantize)
    if args.max_part_mb is not None and args.max_part_mb < 0:
        raise ValueError(f"--max-part-mb must be 0 (never split) or a positive size, got {args.max_part_mb}")
    size = _parse_size(args.size) if args.size else None
    check_destination(args.output)
    model = load_model(args.model)
    if not hasattr(model, "diffusion_model") or not hasattr(model.diffusion_model, "weights"):
        raise CliError(f"{args.model} is already an exported bundle; export from a preset or checkpoint")
    log = (lambda message: print(message, file=sys.stderr, flush=True)) if not args.quiet else None
    try:
        report = export_bundle(model, args.output, quantization=args.quantize, image_size=size,
                               image_encoder=not args.no_image_encoder, calibration_steps=args.calibration_steps,
                               latency_runs=args.latency_runs, log=log,
                               max_part_bytes=None if args.max_part_mb is None else int(args.max_part_mb * 2**20))
    except ExportError as error:
        print("sd-keras: error: " + " ".join(str(error).split()), file=sys.stderr)
        return 1
    for name, entry in report["components"].items():
        parity = entry["parity"]
        print(f"{name}: {entry['size_bytes'] / 1e6:.2f} MB, cosine {parity['cosine']:.6f}, "
              f"PSNR {parity['psnr_db']:.1f} dB, {entry['latency']['median_ms']:.1f} ms"
              + (f", {entry['activations']} activations" if "activations" in entry else ""))
    image = report.get("end_to_end")
    if image:
        print(f"end-to-end image vs Keras: PSNR {image['psnr_db']:.1f} dB, max diff {image['max_abs_diff']}/255")
    print(args.output)
    return 0


def register(subparsers):
    """Add ``export`` (and ``golden``, from ``sd_keras.export.golden`` when present) to the CLI."""
    from sd_keras.export.quantize import MODES

    parser = subparsers.add_parser("export", help="export a model as a LiteRT bundle for phones (verified)")
    parser.add_argument("-m", "--model", required=True, help="preset name or checkpoint path")
    parser.add_argument("-o", "--output", required=True, help="bundle folder to write")
    parser.add_argument("--quantize", default="fp32", help=f"one of {', '.join(MODES)} (default fp32)")
    parser.add_argument("--size", help="WIDTHxHEIGHT, multiples of 64 (default: the model's native size)")
    parser.add_argument("--no-image-encoder", action="store_true", help="leave out the VAE encoder (no img2img)")
    parser.add_argument("--calibration-steps", type=int, default=4,
                        help="steps of each recorded calibration trajectory")
    parser.add_argument("--latency-runs", type=int, default=3)
    parser.add_argument("--max-part-mb", type=float,
                        help="export a UNet with more float32 weights than this as consecutive part files "
                             "(default 1024: the converter needs several times a file's weights in memory; "
                             "0: one file)")
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.set_defaults(func=cmd_export)
    try:
        golden = importlib.import_module("sd_keras.export.golden")
    except ModuleNotFoundError as error:
        if error.name != "sd_keras.export.golden":
            raise
    else:
        golden.register(subparsers)
