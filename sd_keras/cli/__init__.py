"""The ``sd-keras`` command line: ``main(argv)`` and the parser assembly; one module per command.

    sd_keras/cli/__init__.py   main(argv), the parser, exit statuses, the backends' log kept out of the console
    sd_keras/cli/arguments.py  options and checks shared by several commands (-o patterns, --lora, --ema, ...)
    sd_keras/cli/generate.py   generate: text-to-image, image-to-image, inpainting
    sd_keras/cli/info.py       info: the generation parameters stored in a PNG
    sd_keras/cli/convert.py    convert: a checkpoint to sd_keras's saved format
    sd_keras/cli/export.py     export: a LiteRT bundle; golden: the Android core's fixtures
    sd_keras/cli/train.py      train: a YAML training config
    sd_keras/cli/serve.py      serve: the HTTP API and web page
    sd_keras/cli/dataset.py    dataset: a prompt table or template to a sharded image dataset (local or Ray)
    sd_keras/cli/evaluate.py   evaluate: prompt-following of a shapes model (sd_keras.evaluate)
    sd_keras/cli/upscale.py    upscale: images through an AI upscaler file (ESRGAN, Real-ESRGAN) or Lanczos

Each command module has ``register(subparsers)``, which adds its parser and sets ``func`` on it; ``func(args)``
returns the exit status. A new command is a new module listed in ``COMMAND_MODULES``. Front ends sit on top of the
library: command modules import the library, never the other way round.

Exit statuses: 0 done; 2 bad input: argparse's own errors and ``sd_keras.errors.InputError``, printed as one line
``sd-keras: error: <cause>`` (everything that can be checked without the model — sizes, steps, sampler name,
output path, input images — is checked before Keras is imported and the model loaded); 1 a failure: weights that
cannot be downloaded and NaN images print their message, anything else is a bug and shows its traceback;
``train`` adds 3 (paused by ``--max-minutes``) and 130 (Ctrl-C).

Building the parser imports no Keras, backend or numpy (``--help``, ``--version``, ``info`` and argument errors
answer at once): command modules keep their heavy imports inside their command functions. Backend log noise
(TensorFlow / XLA C++ logs, absl, JAX's platform warnings) is silenced unless ``--verbose``.

Defaults (``sd_keras.defaults``): ``generate`` follows AUTOMATIC1111's web UI (20 steps, CFG scale 7, ``Euler
a``), ``serve`` answers as A1111's API does; the Python API keeps KerasCV's.
"""

import argparse
import importlib
import logging
import os
import sys

from sd_keras import __version__, defaults
from sd_keras.errors import InputError

EXIT_USAGE = 2
EXIT_FAILURE = 1
DEFAULT_MODEL = defaults.MODEL  # the shipped demo model: works offline
# One module per command, in the order of ``sd-keras --help``; each has ``register(subparsers)``.
COMMAND_MODULES = (
    "sd_keras.cli.generate",   # generate
    "sd_keras.cli.info",       # info
    "sd_keras.cli.convert",    # convert
    "sd_keras.cli.export",     # export, golden
    "sd_keras.cli.train",      # train
    "sd_keras.cli.serve",      # serve
    "sd_keras.cli.dataset",    # dataset
    "sd_keras.cli.evaluate",   # evaluate
    "sd_keras.cli.upscale",    # upscale
)
# Python loggers of the backends that print start-up noise at WARNING (e.g. JAX's "no GPU/TPU found" fallback).
_NOISY_LOGGERS = ("absl", "tensorflow", "jax._src.xla_bridge", "jax._src.compiler")
# Exit statuses after which the backends' log is not kept: done, bad input (the one-line message says it all),
# train paused by --max-minutes, Ctrl-C.
_NOT_FAILURES = (0, EXIT_USAGE, 3, 130)


def build_parser():
    """The ``sd-keras`` parser with every command of ``COMMAND_MODULES`` (imports no Keras or backend)."""
    parser = argparse.ArgumentParser(prog="sd-keras", description="Keras 3 Stable Diffusion toolkit")
    parser.add_argument("--version", action="version", version=f"sd-keras {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show the backends' log output (TensorFlow, XLA)")
    commands = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(commands)
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
    """Run ``sd-keras`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    argparse's errors exit (``SystemExit(2)``) with its usage message, as ``--help`` and ``--version`` exit 0.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    diverted = None if args.verbose else quiet_backends()
    status = EXIT_FAILURE
    try:
        status = _run(args)
        return status
    finally:
        if diverted is not None:
            kept = diverted.close(failed=status not in _NOT_FAILURES)
            if kept:
                print(f"sd-keras: the backends' log is in {kept} (--verbose shows it as it comes)", file=sys.stderr)


def _print_error(text):
    print("sd-keras: error: " + text, file=sys.stderr)


def _run(args):
    try:
        return args.func(args)
    except InputError as error:  # bad input: one line naming the cause
        _print_error(" ".join(str(error).split()))
        return EXIT_USAGE
    except FloatingPointError as error:  # NaN or inf images: the message says what to try
        _print_error(" ".join(str(error).split()))
        return EXIT_FAILURE
    except Exception as error:  # noqa: BLE001 - re-raised unless it is the one expected failure below
        from sd_keras.weights.download import WeightsUnavailableError

        if not isinstance(error, WeightsUnavailableError):
            raise  # a bug: its traceback, exit status 1
        _print_error(str(error))  # several lines: every missing file and its URL
        return EXIT_FAILURE
