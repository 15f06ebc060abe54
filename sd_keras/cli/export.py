"""``sd-keras export``: a model to a verified LiteRT bundle; ``sd-keras golden``: the Android core's fixtures.

The parsers are built without importing the export modules (they import numpy, TensorFlow and the pipeline):
``sd-keras --help`` must answer at once.

Example:
    sd-keras export -m tiny -o bundles/tiny-int8 --quantize int8 --size 64x64
    sd-keras export -m tiny-xl -o bundles/tiny-xl-int8 --quantize int8   # SDXL: a format-version-2 bundle
"""

import importlib
import sys

from sd_keras.errors import InputError

# quantize.MODES, spelled out so that building the parser does not import quantize (and numpy); a test keeps
# the two equal.
QUANTIZE_MODES = ("fp32", "fp16", "int8", "int8-full", "w8a16", "int4")


def _parse_size(text):
    """``WIDTHxHEIGHT`` (as ``generate``'s ``Size:`` metadata writes it) -> (height, width)."""
    from sd_keras.pipeline import check_size

    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise InputError(f"--size must be WIDTHxHEIGHT such as 512x512, got {text!r}")
    width, height = (int(part) for part in parts)
    check_size(height, width)
    return height, width


def _latency(latency):
    """A component's latency as the report gives it: the median of the timed runs, or the parity check's first
    call when none were timed (``--latency-runs 0``)."""
    if latency["runs"]:
        return f"{latency['median_ms']:.1f} ms"
    return f"{latency['first_call_ms']:.1f} ms (first call)"


def _parse_evaluate_prompts(text):
    """``SINGLE,DOUBLE`` -> (single, double) held-out prompts for the prompt-following gate."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts) or int(parts[0]) < 1:
        raise InputError(f"--evaluate-prompts must be SINGLE,DOUBLE such as 24,8 (at least one one-object "
                         f"prompt), got {text!r}")
    return int(parts[0]), int(parts[1])


# ``sd-keras export`` loads a model in a worker process (``export_bundle`` given the spec) when its checkpoint data
# is at least this large, or when it is an SDXL preset with published weights; smaller models are exported in the
# command's own process.
WORKER_BYTES = 4 * 2**30


def exports_in_workers(spec):
    """Whether ``sd-keras export -m spec`` should export in worker processes (``export_bundle`` given the spec):
    an SDXL preset with published weights, or a checkpoint file or folder of at least ``WORKER_BYTES``."""
    import os

    from sd_keras import loading
    from sd_keras.pipeline_sdxl import TINY_PRESETS, preset_names

    kind = loading.spec_kind(spec)
    if kind == loading.PRESET:
        return spec in preset_names() and spec not in TINY_PRESETS
    if kind != loading.CHECKPOINT:
        return False
    if os.path.isfile(spec):
        return os.path.getsize(spec) >= WORKER_BYTES
    total = 0
    for folder, _, names in os.walk(spec):
        total += sum(os.path.getsize(os.path.join(folder, name)) for name in names
                     if name.endswith((".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".h5")))
    return total >= WORKER_BYTES


def cmd_export(args):
    import sd_keras
    from sd_keras.cli.arguments import check_model_spec
    from sd_keras.export import quantize
    from sd_keras.export.bundle import check_destination
    from sd_keras.export.exporter import export_bundle

    quantize.parse_spec(args.quantize)
    if args.max_part_mb is not None and args.max_part_mb < 0:
        raise InputError(f"--max-part-mb must be 0 (never split) or a positive size, got {args.max_part_mb}")
    size = _parse_size(args.size) if args.size else None
    if args.gate_prompts is not None and args.gate_prompts < 1:
        raise InputError(f"--gate-prompts must be at least 1, got {args.gate_prompts}")
    if args.latency_runs < 0:
        raise InputError(f"--latency-runs must be 0 or more, got {args.latency_runs}")
    if args.check_workers < 1:
        raise InputError(f"--check-workers must be at least 1, got {args.check_workers}")
    if args.gate_steps < 1:
        raise InputError(f"--gate-steps must be at least 1, got {args.gate_steps}")
    evaluate_prompts = _parse_evaluate_prompts(args.evaluate_prompts)
    check_destination(args.output)  # a missing parent folder is created with the bundle
    if check_model_spec(args.model) == "bundle":
        raise InputError(f"{args.model} is already an exported bundle; export from a preset or checkpoint")
    from sd_keras.export.bundle import ExportError

    # a large model is loaded by the export's worker processes, never beside a converter process; a small one here
    model = args.model if exports_in_workers(args.model) else sd_keras.load(args.model)  # imports Keras: last
    log = (lambda message: print(message, file=sys.stderr, flush=True)) if not args.quiet else None
    try:
        report = export_bundle(model, args.output, quantization=args.quantize, image_size=size,
                               image_encoder=not args.no_image_encoder, calibration_steps=args.calibration_steps,
                               latency_runs=args.latency_runs, check_workers=args.check_workers, log=log,
                               max_part_bytes=None if args.max_part_mb is None else int(args.max_part_mb * 2**20),
                               quality_gates=not args.no_quality_gates, gate_prompts=args.gate_prompts,
                               gate_steps=args.gate_steps,
                               prompt_following={"auto": None, "on": True, "off": False}[args.prompt_following],
                               evaluate_prompts=evaluate_prompts)
    except (ExportError, RuntimeError) as error:  # RuntimeError: LiteRT or the quantizer refusing a file
        print("sd-keras: error: " + " ".join(str(error).split()), file=sys.stderr)
        return 1
    for name, entry in report["components"].items():
        parity = entry["parity"]
        print(f"{name} ({entry['quantization']}): {entry['size_bytes'] / 1e6:.2f} MB, "
              f"cosine {parity['cosine']:.6f}, "
              f"PSNR {parity['psnr_db']:.1f} dB, {_latency(entry['latency'])}"
              + (f", {entry['activations']} activations" if "activations" in entry else ""))
    image = report.get("end_to_end")
    if image:
        print(f"end-to-end image vs Keras: PSNR {image['psnr_db']:.1f} dB, max diff {image['max_abs_diff']}/255")
    quality = report.get("quality")
    if quality:
        print(f"quality gates ({', '.join(quality['gates_run'])}; {len(quality['prompts'])} prompts, "
              f"{quality['num_steps']} steps {quality['sampler']}):")
        for name, snr in quality["component_snr"].items():
            print(f"  {name} SNR vs Keras: mean {snr['mean_db']:.1f} dB, worst {snr['worst_db']:.1f} dB "
                  f"over {snr['inputs']} inputs")
        if "prompt_following" in quality:
            section = quality["prompt_following"]
            print("  prompt-following (bundle / Keras): " + ", ".join(
                f"{key} {section['bundle'][key]:.3f} / {section['keras'][key]:.3f}" for key in section["keys"]))
        if "image_statistics" in quality:
            stats = quality["image_statistics"]
            print(f"  image statistics vs Keras: channel means within {stats['max_mean_level_diff']:.1f} levels, "
                  f"contrast ratio {stats['min_contrast_ratio']:.3f}-{stats['max_contrast_ratio']:.3f}")
    print(args.output)
    return 0


def cmd_golden(args):
    golden = importlib.import_module("sd_keras.export.golden")
    written = golden.write_golden(args.output)
    if args.tables:
        written += golden.write_text_tables(args.tables)
    for path in written:
        print(path)
    return 0


def register(subparsers):
    """Add ``export`` and ``golden`` to the ``sd-keras`` command line."""
    parser = subparsers.add_parser("export", help="export a model as a LiteRT bundle for phones (verified)")
    parser.add_argument("-m", "--model", required=True,
                        help="preset name or checkpoint path (SDXL presets and checkpoints of 4 GiB or more are "
                             "loaded by a worker process that exits before the converters run, so that they fit "
                             "the memory of a 24 GB machine)")
    parser.add_argument("-o", "--output", required=True,
                        help="bundle folder to write (missing parent folders are created)")
    parser.add_argument("--quantize", default="fp32",
                        help=f"one of {', '.join(QUANTIZE_MODES)} (default fp32), or a mode per component: "
                             f"unet=int8,text_encoder=fp16,decoder=fp16 (components not named: fp32, or a bare "
                             f"mode in the list; SDXL models also have text_encoder_2)")
    parser.add_argument("--size", help="WIDTHxHEIGHT, multiples of 64 (default: the model's native size)")
    parser.add_argument("--no-image-encoder", action="store_true", help="leave out the VAE encoder (no img2img)")
    parser.add_argument("--calibration-steps", type=int, default=4,
                        help="steps of each recorded calibration trajectory")
    parser.add_argument("--latency-runs", type=int, default=3,
                        help="timed interpreter calls per component after a warm-up (default 3); 0: report only "
                             "the parity check's first call")
    parser.add_argument("--check-workers", type=int, default=1,
                        help="components checked side by side (default 1); 2 halves the check of a w8a16 bundle "
                             "on two cores (its int16 kernels use one core each) and holds two components' "
                             "memory at once")
    parser.add_argument("--max-part-mb", type=float,
                        help="export a UNet with more float32 weights than this as consecutive part files "
                             "(default 1024: the converter needs several times a file's weights in memory; "
                             "0: one file)")
    parser.add_argument("--gate-prompts", type=int,
                        help="held-out prompts whose full trajectories the quality gates replay: every component "
                             "against Keras on every step (mean SNR gated per mode) and, for models without "
                             "prompt-following, image statistics against Keras (default 8; 2 for random weights). "
                             "Each prompt costs one generation by Keras and by the bundle: seconds for the shapes "
                             "model, minutes per prompt for SD 1.x at 512x512 on a CPU")
    parser.add_argument("--gate-steps", type=int, default=20,
                        help="steps of each quality-gate trajectory (deterministic DDIM sampler; default 20)")
    parser.add_argument("--prompt-following", choices=("auto", "on", "off"), default="auto",
                        help="gate on sd_keras.evaluate's colour/shape/background accuracy against Keras (a bundle "
                             "more than 5 points below is not written); auto: for the shapes model, where it "
                             "takes about a minute on a 2-core CPU for fp32/fp16/int8 and up to about 12 for "
                             "int8-full and w8a16, whose int16 kernels are slow)")
    parser.add_argument("--evaluate-prompts", metavar="SINGLE,DOUBLE",
                        help="one- and two-object held-out prompts of the prompt-following gate (default 24,8)")
    parser.add_argument("--no-quality-gates", action="store_true",
                        help="skip the quality gates (the per-component parity checks still run)")
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.set_defaults(func=cmd_export)

    golden = subparsers.add_parser(
        "golden", help="write the golden vectors the Android core is tested against",
        description="Write JSON golden vectors (tokenizer, samplers, seed noise, trajectories) for the Kotlin port.")
    golden.add_argument("-o", "--output", required=True,
                        help="fixture folder, e.g. android_demo/core/src/test/resources/golden")
    golden.add_argument("--tables", help="also write the Unicode/HTML tables the Kotlin core ships, e.g. "
                                         "android_demo/core/src/main/resources/org/sdkeras/core")
    golden.set_defaults(func=cmd_golden)
