"""The ``sd-keras`` command line.

Flags of ``generate`` follow stable-diffusion.cpp (``-p``, ``-n``, ``-m``, ``-s``, ``-W``, ``-H``, ``--steps``,
``--cfg-scale``, ``--sampling-method``, ``-b``, ``-o``, ``-i``, ``--strength``, ``--mask``). Bad input prints one
line and exits with status 2; everything that can be checked without the model (sizes, steps, sampler name,
output path, input images) is checked before Keras is imported and the model loaded.

Building the parser imports no Keras, backend or numpy (``--help``, ``--version``, ``info`` and argument errors
answer at once): command modules keep their heavy imports inside their command functions. Backend log noise
(TensorFlow / XLA C++ logs, absl, JAX's platform warnings) is silenced unless ``--verbose``.
"""

import argparse
import importlib
import logging
import os
import sys

from sd_keras import __version__
from sd_keras.weights.convert_cli import add_checkpoint_arguments, add_lora_argument, apply_lora_arguments

EXIT_USAGE = 2
DEFAULT_MODEL = "shapes"  # the shipped demo model: works offline
# Modules that add sub-commands: each has ``register(subparsers)`` and sets ``func`` on its parser; a command's
# ``func(args)`` returns the exit status and raises CliError/ValueError for bad input.
_COMMAND_MODULES = (
    "sd_keras.weights.convert_cli",   # convert
    "sd_keras.export.cli",            # export, golden
    "sd_keras.train_cli",             # train
    "sd_keras.server.cli",            # serve
)
# Python loggers of the backends that print start-up noise at WARNING (e.g. JAX's "no GPU/TPU found" fallback).
_NOISY_LOGGERS = ("absl", "tensorflow", "jax._src.xla_bridge", "jax._src.compiler")
# Exit statuses after which the backends' log is not kept: done, bad input (the one-line message says it all),
# train paused by --max-minutes, Ctrl-C.
_NOT_FAILURES = (0, EXIT_USAGE, 3, 130)


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _output_paths(pattern, count):
    """The ``count`` PNG paths of ``-o`` (``sd_keras.images.output_paths``' rules); CliError naming the pattern
    when it cannot be filled in."""
    from sd_keras.images import output_paths

    try:
        return output_paths(pattern, count)
    except ValueError as error:
        raise CliError(f"-o {pattern}: not a valid file name pattern ({error}); use one %d for the image index, "
                       f"e.g. out_%d.png, and %% for a literal %") from None


def check_output_paths(pattern, count):
    """The output paths of ``-o``, each checked writable now (before the model is loaded); CliError naming
    the path given. Missing parent folders are fine: they are created when the images are written."""
    from sd_keras import files

    paths = _output_paths(pattern, count)
    for path in paths:
        try:
            files.check_writable(path)
        except ValueError as error:
            shown = str(error) if path == pattern else f"-o {pattern}: {error}"
            raise CliError(shown) from None
    return paths


def check_model_spec(spec, *, prediction_type=None, ema=False):
    """CliError unless ``spec`` is a preset name or an existing file or folder, and ``prediction_type`` / ``ema``
    are given only for a checkpoint (checked before anything is loaded)."""
    from sd_keras import presets

    if spec not in presets.names() and not os.path.exists(spec):
        raise CliError(f"unknown model {spec!r}: not a preset ({', '.join(presets.names())}) and no such file or "
                       "folder")
    if (prediction_type is not None or ema) and (spec in presets.names() or os.path.isfile(
            os.path.join(spec, "manifest.json"))):
        raise CliError(f"--prediction-type / --ema apply to checkpoint files and folders, not to {spec!r}")
    return spec


def load_model(spec, *, dtype="float32", prediction_type=None, ema=False):
    """A preset name, an sd_keras saved model / checkpoint path, or an exported bundle folder.

    ``prediction_type`` / ``ema``: how a checkpoint file is read (``from_checkpoint``); what was inferred or
    chosen is printed to stderr."""
    from sd_keras import presets
    from sd_keras.pipeline import StableDiffusion

    check_model_spec(spec, prediction_type=prediction_type, ema=ema)
    if spec in presets.names():
        return StableDiffusion.from_preset(spec, dtype=dtype)
    if os.path.isdir(spec) and os.path.exists(os.path.join(spec, "manifest.json")):
        from sd_keras.export.runner import BundleRunner

        return BundleRunner(spec)
    from sd_keras.weights.checkpoints import printing_notes

    with printing_notes(sys.stderr):
        return StableDiffusion.from_checkpoint(spec, dtype=dtype, prediction_type=prediction_type, ema=ema)


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


def check_generate_arguments(args):
    """Every check of ``generate``'s arguments that needs neither Keras nor the model; returns the output paths.

    Raises CliError / ValueError (one line naming the argument) for bad sizes, steps, CFG scale, strength,
    batch count, sampler name, model, LoRA files, input images and output path.
    """
    from sd_keras.pipeline import check_guidance, check_size, check_steps, check_strength, load_image
    from sd_keras.schedulers import get_sampler
    from sd_keras.weights.convert_cli import lora_specs

    if args.width is not None or args.height is not None:  # 0 is an invalid size, not "the default"
        check_size(64 if args.height is None else args.height, 64 if args.width is None else args.width)
    check_steps(args.steps)
    check_guidance(args.cfg_scale)
    check_strength(args.strength)
    if args.batch_count < 1:
        raise CliError(f"-b/--batch-count must be >= 1, got {args.batch_count}")
    get_sampler(args.sampling_method, args.steps)  # ValueError listing the known names
    if args.mask and not args.init_img:
        raise CliError("--mask needs --init-img")
    check_model_spec(args.model, prediction_type=args.prediction_type, ema=args.ema)
    lora_specs(args)
    for flag, image in (("--init-img", args.init_img), ("--mask", args.mask)):
        if image:
            load_image(image, name=flag)  # unreadable, or too large, before minutes of loading
    return check_output_paths(args.output, args.batch_count)


def cmd_generate(args):
    paths = check_generate_arguments(args)

    import numpy as np

    from sd_keras import backend, metadata, noise

    backend.use_devices(args.devices)  # before the model is built: weights are replicated per device
    model = load_model(args.model, dtype=args.dtype, prediction_type=args.prediction_type, ema=args.ema)
    apply_lora_arguments(model, args)
    seed = noise.random_seed() if args.seed is None or args.seed < 0 else args.seed
    height = model.config.image_size[0] if args.height is None else args.height
    width = model.config.image_size[1] if args.width is None else args.width
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
            images = model.text_to_image(args.prompt, progress=progress, **common)
    finally:
        close()
    settings = {"Steps": args.steps, "Sampler": args.sampling_method, "CFG scale": args.cfg_scale}
    for i, (image, path) in enumerate(zip(np.asarray(images), paths)):
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
    parser.add_argument("--version", action="version", version=f"sd-keras {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show the backends' log output (TensorFlow, XLA)")
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
    gen.add_argument("-o", "--output", default="output.png",
                     help="PNG path (missing folders are created); %%d is replaced by the image index")
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
    for command in commands.choices.values():  # also accepted after the command: sd-keras generate ... --verbose
        if "--verbose" not in command._option_string_actions:
            command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                                 help="show the backends' log output (TensorFlow, XLA)")
    return parser


class _NativeLogDiverted:
    """Point file descriptor 2 at a log file while Python's ``sys.stderr`` keeps writing to the console.

    TensorFlow (2.19 and later prints its start-up lines whatever TF_CPP_MIN_LOG_LEVEL says), XLA and absl write
    from C++ straight to descriptor 2. Only where ``sys.stderr`` is the process's own stderr: under a caller
    that captures ``sys.stderr`` (tests, notebooks) nothing changes. ``close(failed)`` restores descriptor 2
    and returns the log's path when the command failed and the log holds something, else deletes it.
    """

    def __init__(self):
        import tempfile

        self._log = tempfile.NamedTemporaryFile(prefix="sd-keras-backend-", suffix=".log", delete=False)
        sys.stderr.flush()
        self._stderr = sys.stderr
        self._saved = os.dup(2)
        os.dup2(self._log.fileno(), 2)
        sys.stderr = open(os.dup(self._saved), "w", buffering=1, encoding=self._stderr.encoding,
                          errors=self._stderr.errors, closefd=True)

    @classmethod
    def start(cls):
        stream = sys.stderr
        try:
            if stream is not sys.__stderr__ or stream.fileno() != 2:
                return None
        except (AttributeError, OSError, ValueError):
            return None
        try:
            return cls()
        except OSError:  # no writable temporary folder: keep the console as it is
            return None

    def close(self, failed):
        diverted = sys.stderr
        diverted.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        sys.stderr = self._stderr
        diverted.close()
        self._log.close()
        if failed and os.path.getsize(self._log.name):
            return self._log.name
        os.unlink(self._log.name)
        return None


def quiet_backends():
    """Keep the backends' start-up and compiler log lines (CUDA probing on a CPU machine, oneDNN notes, XLA
    warnings) out of the console; an explicit TF_CPP_MIN_LOG_LEVEL in the environment wins. Call before
    Keras or a backend is imported (their C++ logging reads the environment once).

    Returns the ``_NativeLogDiverted`` to close when the command ends, or None."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's and XLA's C++ logs (jaxlib's too)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    return _NativeLogDiverted.start()


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    diverted = None if args.verbose else quiet_backends()
    status = 1
    try:
        status = _run(args)
        return status
    finally:
        if diverted is not None:
            kept = diverted.close(failed=status not in _NOT_FAILURES)
            if kept:
                print(f"sd-keras: the backends' log is in {kept} (--verbose shows it as it comes)", file=sys.stderr)


def _run(args):
    try:
        return args.func(args)
    except (CliError, ValueError, TypeError, FileNotFoundError, FloatingPointError) as error:
        print("sd-keras: error: " + " ".join(str(error).split()), file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:
        from sd_keras.weights.download import WeightsUnavailableError

        if not isinstance(error, (WeightsUnavailableError, OSError)):
            raise
        print(f"sd-keras: error: {error}", file=sys.stderr)  # several lines: every missing file and its URL
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
