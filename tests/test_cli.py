"""``sd-keras``: commands run in-process through ``sd_keras.cli.main(argv)``; subprocesses only where the process
itself is what is tested (start-up cost and imports, native log lines on file descriptor 2, the console script)."""

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import sd_keras
from sd_keras import cli, defaults, metadata
from sd_keras.cli import info as info_command
from sd_keras.errors import InputError


def one_error_line(capsys):
    """The one ``sd-keras: error:`` line the last command printed (asserting there is exactly one, no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("sd-keras: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_generate_writes_png_with_parameters_and_info_reads_it(tmp_path, capsys):
    out = tmp_path / "new" / "img_%d.png"  # a missing folder is created
    status = cli.main(["generate", "-m", "tiny", "-p", "a red circle", "-n", "blurry", "-W", "64", "-H", "64",
                       "--steps", "3", "-s", "7", "-b", "2", "--sampling-method", "Euler a", "-o", str(out),
                       "--no-progress"])
    stdout = capsys.readouterr().out
    assert status == 0
    tmp_path = tmp_path / "new"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "img_0.png").st_mode) == 0o666 & ~umask
    texts = [metadata.read_parameters(str(tmp_path / f"img_{i}.png")) for i in range(2)]
    assert texts[0] == ("a red circle\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a, CFG scale: 7, "
                        "Seed: 7, Size: 64x64, Model: tiny")
    assert "Seed: 8," in texts[1]
    assert texts[0] in stdout and texts[1] in stdout
    assert cli.main(["info", str(tmp_path / "img_1.png")]) == 0
    stdout = capsys.readouterr().out
    assert "Seed: 8" in stdout and "negative_prompt: blurry" in stdout


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "num_steps"),
    (["-W", "100"], "width=100"),
    (["--sampling-method", "nope"], "sampler"),
    (["--cfg-scale", "nan"], "guidance"),
    (["-i", "/nonexistent/x.png"], "cannot read image"),
    (["--mask", "m.png"], "--mask needs --init-img"),
    (["-m", "no-such-model"], "unknown model 'no-such-model': not a preset (sd-v1, sd-v2, tiny, shapes"),
    (["--ema"], "tiny: a preset: --prediction-type / --ema"),
    (["--lora", "/nonexistent/style.safetensors:0.8"], "style.safetensors"),
    (["-W", "0"], "width=0"),
    (["-H", "0"], "height=0"),
    (["-b", "0"], "--batch-count must be >= 1"),
    (["--strength", "2"], "strength"),
    (["-o", "/proc/x.png"], "cannot write /proc/x.png"),
    (["-o", "{tmp}/file.txt/x.png"], "cannot write {tmp}/file.txt/x.png: {tmp}/file.txt is not a folder"),
    (["-o", "{tmp}"], "cannot write {tmp}: it is a folder"),
    (["-o", "{tmp}/out_%d_%d.png", "-b", "2"], "-o {tmp}/out_%d_%d.png: not a valid file name pattern"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "file.txt").write_text("a file")
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    status = cli.main(["generate", "-m", "tiny", "-p", "x", "-W", "64", "-H", "64", "--steps", "2",
                       "-o", str(tmp_path / "o.png"), *args])
    assert status == 2
    assert message.replace("{tmp}", str(tmp_path)) in one_error_line(capsys)
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]


@pytest.mark.once
def test_only_input_errors_are_usage_errors_and_a_bug_shows_its_traceback(monkeypatch, capsys):
    def failing(error):
        def command(args):
            raise error
        return command

    monkeypatch.setattr(info_command, "cmd_info", failing(InputError("x.png: the cause, in one line")))
    assert cli.main(["info", "x.png"]) == 2
    assert one_error_line(capsys) == "sd-keras: error: x.png: the cause, in one line"
    # anything else is a bug: it propagates (the interpreter prints its traceback and exits with status 1)
    for bug in (ValueError("not bad input"), TypeError("a bug"), KeyError("a bug"), FileNotFoundError("a bug")):
        monkeypatch.setattr(info_command, "cmd_info", failing(bug))
        with pytest.raises(type(bug)):
            cli.main(["info", "x.png"])
        assert "sd-keras: error:" not in capsys.readouterr().err
    # failures that are not bugs say what happened, with status 1
    from sd_keras.weights.download import WeightsUnavailableError

    for failure in (FloatingPointError("the decoded image contains NaN"),
                    WeightsUnavailableError("offline: kcv_decoder.h5 is not in the cache\nput it in /cache")):
        monkeypatch.setattr(info_command, "cmd_info", failing(failure))
        assert cli.main(["info", "x.png"]) == 1
        assert capsys.readouterr().err.startswith(f"sd-keras: error: {str(failure).splitlines()[0]}")
    # argparse's own errors exit 2 with its usage message
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--steps", "many"])
    assert exit_info.value.code == 2 and "invalid int value: 'many'" in capsys.readouterr().err


@pytest.mark.once
def test_every_command_module_registers_its_command():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"generate", "info", "convert", "export", "golden", "train", "serve", "evaluate"} <= set(commands)
    assert "bench" not in commands
    for name in commands:  # every command's help builds
        assert commands[name].format_help()


@pytest.mark.once
def test_defaults_come_from_one_module():
    args = cli.build_parser().parse_args(["generate", "-p", "x"])
    assert (args.steps, args.cfg_scale, args.sampling_method, args.seed, args.strength, args.model) == (
        defaults.CLI.steps, defaults.CLI.cfg_scale, defaults.CLI.sampler, defaults.CLI.seed, defaults.CLI.strength,
        defaults.MODEL)
    assert (defaults.CLI.steps, defaults.CLI.cfg_scale, defaults.CLI.sampler) == (20, 7.0, "Euler a")
    assert args.prompt_syntax == defaults.CLI.prompt_syntax
    serve_args = cli.build_parser().parse_args(["serve"])
    assert serve_args.prompt_syntax == defaults.SERVER.prompt_syntax
    help_text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["generate"].format_help().split())
    for shown in ("(default: 20)", "(default: 7.0)", "(default: Euler a)", "(default: shapes)"):
        assert shown in help_text
    from sd_keras.server import schemas
    from sd_keras.server.samplers import DEFAULT_SAMPLER

    request = schemas.Txt2ImgRequest(prompt="x")
    assert (request.steps, request.cfg_scale, request.seed, DEFAULT_SAMPLER) == (
        defaults.SERVER.steps, defaults.SERVER.cfg_scale, defaults.SERVER.seed, defaults.SERVER.sampler)
    assert schemas.Img2ImgRequest(prompt="x", init_images=["AA=="]).denoising_strength == defaults.SERVER.strength


# What runs before Keras: --help, info and every argument check. Each must import no backend and take well
# under 2 s of CPU (building the parser used to import Keras and TensorFlow: 12-25 s).
LIGHT_COMMANDS = {
    "help": ["--help"],
    "version": ["--version"],
    "generate help": ["generate", "--help"],
    "export help": ["export", "--help"],
    "info": ["info", "{png}"],
    "missing prompt": ["generate"],
    "sampler typo": ["generate", "-p", "x", "--sampling-method", "Eular a"],
    "zero width": ["generate", "-p", "x", "-W", "0"],
    "bad steps": ["generate", "-p", "x", "--steps", "0"],
    "bad cfg": ["generate", "-p", "x", "--cfg-scale", "inf"],
    "bad strength": ["generate", "-p", "x", "--strength", "-1"],
    "bad output": ["generate", "-p", "x", "-o", "/proc/x.png"],
    "ema with a preset": ["generate", "-p", "x", "-m", "tiny", "--ema"],
    "export bad output": ["export", "-m", "tiny", "-o", "/proc/bundle"],
    "convert bad output": ["convert", "{png}", "-o", "/proc/model"],
    "train missing config": ["train", "{png}.yaml"],
    "train bad override": ["train", "{configs}/tiny_test.yaml", "train.steps=-5"],
    "serve bad port": ["serve", "--port", "70000"],
}


@pytest.mark.slow  # one interpreter start-up; the commands themselves run in it
@pytest.mark.once
def test_help_info_and_argument_errors_import_no_backend(tmp_path):
    png = tmp_path / "x.png"
    metadata.save_png(np.zeros((8, 8, 3), np.uint8), str(png), "a cat\nSteps: 3, Seed: 1")
    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    commands = {name: [arg.replace("{png}", str(png)).replace("{configs}", configs) for arg in argv]
                for name, argv in LIGHT_COMMANDS.items()}
    code = textwrap.dedent(f"""
        import contextlib, io, json, sys, time
        from sd_keras import cli
        results = {{}}
        for name, argv in {commands!r}.items():
            start, err = time.process_time(), io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                try:
                    status = cli.main(argv)
                except SystemExit as exit:
                    status = exit.code
                except Exception as error:  # a bug: reported with the command's name below
                    status = f"{{type(error).__name__}}: {{error}}"
            loaded = sorted(m for m in ("keras", "tensorflow", "jax", "torch") if m in sys.modules)
            results[name] = [status, loaded, time.process_time() - start, err.getvalue()]
        print(json.dumps(results))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    import json

    for name, (status, loaded, cpu, err) in json.loads(result.stdout.splitlines()[-1]).items():
        assert loaded == [], f"{name}: imported {loaded}"
        expected = 0 if "help" in name or name in ("version", "info") else 2
        assert status == expected, f"{name}: {err}"
        if expected == 2:
            assert "error:" in err and "Traceback" not in err, f"{name}: {err}"
        assert cpu < 2.0, f"{name}: {cpu:.2f} s of CPU"


def test_export_destination_may_have_missing_parent_folders(tmp_path):
    from sd_keras.export import bundle

    destination = tmp_path / "bundles" / "x"
    assert bundle.check_destination(str(destination)) == str(destination)
    assert list(tmp_path.iterdir()) == []  # created with the bundle, not by the check
    with pytest.raises(bundle.BundleError, match=f"cannot write {tmp_path}/file/x: {tmp_path}/file is not a folder"):
        (tmp_path / "file").write_text("x")
        bundle.check_destination(str(tmp_path / "file" / "x"))


@pytest.mark.slow  # the console's file descriptor 2 is the process's own
@pytest.mark.once
@pytest.mark.parametrize("verbose, status", [(False, 0), (True, 0), (False, 1)])
def test_native_log_lines_stay_out_of_the_console_unless_verbose(verbose, status):
    # A stand-in for a command whose backend writes from C++ straight to file descriptor 2.
    code = textwrap.dedent(f"""
        import os, sys
        from sd_keras import cli
        from sd_keras.cli import info

        def command(args):
            os.write(2, b"I0000 cuda_platform.cc: a native log line\\n")
            print("a line of ours", file=sys.stderr)
            return {status}

        info.cmd_info = command
        sys.exit(cli.main({["--verbose"] if verbose else []!r} + ["info", "x.png"]))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == status, result.stderr
    assert "a line of ours" in result.stderr
    assert ("a native log line" in result.stderr) == verbose, result.stderr
    kept = [line for line in result.stderr.splitlines() if "the backends' log is in" in line]
    if status and not verbose:
        path = kept[0].split(" is in ")[1].split(" ")[0]
        try:
            assert "a native log line" in open(path).read()
        finally:
            os.unlink(path)
    else:
        assert kept == []


@pytest.mark.slow  # starts the installed console script and the module entry point
@pytest.mark.once
def test_console_script_and_module_entry_point():
    script = shutil.which("sd-keras", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    assert script, "the sd-keras console script is not installed (pip install -e .)"
    for command in ([script], [sys.executable, "-m", "sd_keras.cli"]):
        result = subprocess.run([*command, "--version"], capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout.strip() == f"sd-keras {sd_keras.__version__}", result
        result = subprocess.run([*command, "info", "/nonexistent.png"], capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.startswith("sd-keras: error: "), result.stderr


def test_verbose_is_accepted_before_and_after_the_command():
    parser = cli.build_parser()
    assert parser.parse_args(["--verbose", "info", "x.png"]).verbose
    assert parser.parse_args(["generate", "-p", "x", "--verbose"]).verbose
    assert not parser.parse_args(["generate", "-p", "x"]).verbose


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"sd-keras {sd_keras.__version__}"


def test_export_modes_in_help_are_quantize_modes():
    from sd_keras.cli import export as export_command
    from sd_keras.export import quantize

    assert export_command.QUANTIZE_MODES == quantize.MODES


@pytest.mark.slow
def test_default_model_is_the_shipped_demo_model(tmp_path, capsys):
    assert cli.main(["generate", "-p", "a red circle on a blue background", "--steps", "4", "--no-progress",
                     "-o", str(tmp_path / "o.png")]) == 0
    assert "Size: 128x128, Model: shapes" in metadata.read_parameters(str(tmp_path / "o.png"))


def test_info_without_parameters(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    assert cli.main(["info", str(tmp_path / "plain.png")]) == 2
    assert "plain.png: no generation parameters in this image" in one_error_line(capsys)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.once
def test_legacy_ckpt_with_code_is_refused_in_one_line_of_our_own(tmp_path, capsys):
    import pickle

    import torch

    marker = tmp_path / "pwned"
    files = {"bare.ckpt": pickle.dumps({"state_dict": _Evil(marker)}, protocol=2),
             "protocol4.ckpt": pickle.dumps({"state_dict": {"x": _Evil(marker)}}, protocol=4)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Evil(marker)}, tmp_path / "torch_legacy.ckpt",
               _use_new_zipfile_serialization=False)  # the pre-1.6 format: a sequence of pickles, no zip
    for name in [*files, "torch_legacy.ckpt"]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            status = cli.main(["convert", str(tmp_path / name), "-o", str(tmp_path / "out")])
        assert status == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err  # no advice
        assert [str(w.message) for w in caught] == []  # no torch warning
        assert err[0].startswith(f"sd-keras: error: {tmp_path / name}: refusing to load: the pickle "), err[0]
        if name != "protocol4.ckpt":  # torch stops at protocol 4's first opcode, before it reaches the global
            assert "references the global posix.system" in err[0], err[0]
        assert "weights_only" not in err[0] and "Re-running" not in err[0]
    assert not marker.exists() and not (tmp_path / "out").exists()
