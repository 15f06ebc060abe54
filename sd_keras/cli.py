"""The ``sd-keras`` command line.

Flags of ``generate`` follow stable-diffusion.cpp (``-p``, ``-n``, ``-m``, ``-s``, ``-W``, ``-H``, ``--steps``,
``--cfg-scale``, ``--sampling-method``, ``-b``, ``-o``, ``-i``, ``--strength``, ``--mask``). Bad input prints one
line and exits with status 2.
"""

import argparse
import importlib
import os
import sys

from sd_keras.weights.convert_cli import add_checkpoint_arguments, add_lora_argument, apply_lora_arguments
from sd_keras.weights.download import WeightsUnavailableError

EXIT_USAGE = 2
DEFAULT_MODEL = "shapes"  # the shipped demo model: works offline
# Modules that add sub-commands: each has ``register(subparsers)`` and sets ``func`` on its parser; a command's
# ``func(args)`` returns the exit status and raises CliError/ValueError for bad input.
_COMMAND_MODULES = (
    "sd_keras.weights.convert_cli",   # convert
    "sd_keras.export.cli",            # export, golden
    "sd_keras.train_cli",             # train
    "sd_keras.server.cli",            # serve
    "sd_keras.bench_cli",             # bench
)


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _output_paths(pattern, count):
    if "%d" in pattern:
        return [pattern % i for i in range(count)]
    if count == 1:
        return [pattern]
    stem, ext = os.path.splitext(pattern)
    return [f"{stem}_{i}{ext or '.png'}" for i in range(count)]


def load_model(spec, *, dtype="float32", prediction_type=None, ema=False):
    """A preset name, an sd_keras saved model / checkpoint path, or an exported bundle folder.

    ``prediction_type`` / ``ema``: how a checkpoint file is read (``from_checkpoint``); what was inferred or
    chosen is printed to stderr."""
    from sd_keras import presets
    from sd_keras.pipeline import StableDiffusion

    if (prediction_type is not None or ema) and (spec in presets.names() or os.path.isfile(
            os.path.join(spec, "manifest.json"))):
        raise CliError(f"--prediction-type / --ema apply to checkpoint files and folders, not to {spec!r}")
    if spec in presets.names():
        return StableDiffusion.from_preset(spec, dtype=dtype)
    if os.path.isdir(spec) and os.path.exists(os.path.join(spec, "manifest.json")):
        from sd_keras.export.runner import BundleRunner

        return BundleRunner(spec)
    if os.path.exists(spec):
        from sd_keras.weights.checkpoints import printing_notes

        with printing_notes(sys.stderr):
            return StableDiffusion.from_checkpoint(spec, dtype=dtype, prediction_type=prediction_type, ema=ema)
    raise CliError(f"unknown model {spec!r}: not a preset ({', '.join(presets.names())}) and no such file or folder")


COMPILING_TEXT = "compiling (first run of this shape)"


class _ProgressBar:
    """The sampling bar: the loop's ``progress`` callback (steps done) with its ``phase`` hook, which says when
    the first run of a shape compiles and restarts the bar's clock when the steps start, so the rate and the ETA
    come from the step times alone."""

    def __init__(self, bar):
        self.bar = bar
        self._first_step = True

    def __call__(self, step_done):
        if self._first_step:  # image-to-image starts at a later step: those steps took no time
            self.bar.initial = step_done - 1
            self._first_step = False
        self.bar.n = step_done
        self.bar.refresh()

    def phase(self, name):
        if name == "compiling":
            self.bar.set_description_str(COMPILING_TEXT)
            return
        self.bar.set_description_str("sampling", refresh=False)
        self.bar.reset()  # restarts the clock
        self._first_step = True


def _progress_bar(total, enabled):
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc="sampling", unit="step", file=sys.stderr, leave=False)
    return _ProgressBar(bar), bar.close


def cmd_generate(args):
    import numpy as np

    from sd_keras import metadata, noise
    from sd_keras.pipeline import check_size

    if args.width is not None or args.height is not None:
        check_size(args.height or 512, args.width or 512)
    from sd_keras import backend

    backend.use_devices(args.devices)  # before the model is built: weights are replicated per device
    model = load_model(args.model, dtype=args.dtype, prediction_type=args.prediction_type, ema=args.ema)
    apply_lora_arguments(model, args)
    seed = noise.random_seed() if args.seed is None or args.seed < 0 else args.seed
    height = args.height or model.config.image_size[0]
    width = args.width or model.config.image_size[1]
    common = dict(negative_prompt=args.negative_prompt or None, batch_size=args.batch_count,
                  num_steps=args.steps, unconditional_guidance_scale=args.cfg_scale, seed=seed,
                  sampler=args.sampling_method, height=height, width=width)
    steps_run = args.steps
    progress, close = _progress_bar(steps_run, args.progress and sys.stderr.isatty() or args.progress == "always")
    try:
        if args.init_img and args.mask:
            images = model.inpaint(args.prompt, args.init_img, args.mask, strength=args.strength, progress=progress,
                                   **common)
        elif args.init_img:
            images = model.image_to_image(args.prompt, args.init_img, args.strength, progress=progress, **common)
        else:
            if args.mask:
                raise CliError("--mask needs --init-img")
            images = model.text_to_image(args.prompt, progress=progress, **common)
    finally:
        close()
    settings = {"Steps": args.steps, "Sampler": args.sampling_method, "CFG scale": args.cfg_scale}
    for i, (image, path) in enumerate(zip(np.asarray(images), _output_paths(args.output, len(images)))):
        extra = {"Denoising strength": args.strength} if args.init_img else {}
        text = metadata.format_parameters(args.prompt, args.negative_prompt or None, **settings, Seed=seed + i,
                                          Size=f"{width}x{height}", Model=os.path.basename(args.model.rstrip("/")),
                                          **extra)
        metadata.save_png(image, path, text)
        print(f"{path}\n{text}", flush=True)
    return 0


def cmd_info(args):
    from sd_keras import metadata

    text = metadata.read_parameters(args.image)
    if text is None:
        raise CliError(f"{args.image}: no generation parameters in this image")
    parsed = metadata.parse_parameters(text)
    print(text)
    print()
    for key, value in parsed.items():
        print(f"{key}: {value}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="sd-keras", description="Keras 3 Stable Diffusion toolkit")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="text-to-image, image-to-image and inpainting")
    gen.add_argument("-p", "--prompt", required=True)
    gen.add_argument("-n", "--negative-prompt", default="")
    gen.add_argument("-m", "--model", default=DEFAULT_MODEL, help="preset name, checkpoint path or bundle folder")
    gen.add_argument("-s", "--seed", type=int, default=42, help="-1 for a random seed")
    gen.add_argument("-W", "--width", type=int)
    gen.add_argument("-H", "--height", type=int)
    gen.add_argument("--steps", type=int, default=20)
    gen.add_argument("--cfg-scale", type=float, default=7.0)
    gen.add_argument("--sampling-method", default="Euler a")
    gen.add_argument("-b", "--batch-count", type=int, default=1)
    gen.add_argument("-o", "--output", default="output.png", help="PNG path; %%d is replaced by the image index")
    gen.add_argument("-i", "--init-img")
    gen.add_argument("--strength", type=float, default=0.75)
    gen.add_argument("--mask")
    gen.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    add_lora_argument(gen)
    add_checkpoint_arguments(gen)
    gen.add_argument("--devices", default=None, help="'all' or a count: data-parallel over local GPUs (JAX)")
    gen.add_argument("--progress", nargs="?", const="always", default=True,
                     help="progress bar (on when stderr is a terminal; --progress forces it)")
    gen.add_argument("--no-progress", dest="progress", action="store_false")
    gen.set_defaults(func=cmd_generate)

    info = commands.add_parser("info", help="print the generation parameters stored in a PNG")
    info.add_argument("image")
    info.set_defaults(func=cmd_info)

    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if not module_name.startswith(error.name or "?"):  # a broken module must not pass for a missing one
                raise
            continue
        module.register(commands)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CliError, ValueError, TypeError, FileNotFoundError, FloatingPointError) as error:
        print("sd-keras: error: " + " ".join(str(error).split()), file=sys.stderr)
        return EXIT_USAGE
    except (WeightsUnavailableError, OSError) as error:
        print(f"sd-keras: error: {error}", file=sys.stderr)  # several lines: every missing file and its URL
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
