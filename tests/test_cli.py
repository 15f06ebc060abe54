import os
import resource
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import sd_keras
from sd_keras import cli, metadata


def run(*args):
    return subprocess.run([sys.executable, "-m", "sd_keras.cli", *args], capture_output=True, text=True)


def test_generate_writes_png_with_parameters_and_info_reads_it(tmp_path):
    out = tmp_path / "new" / "img_%d.png"  # a missing folder is created
    result = run("generate", "-m", "tiny", "-p", "a red circle", "-n", "blurry", "-W", "64", "-H", "64",
                 "--steps", "3", "-s", "7", "-b", "2", "--sampling-method", "Euler a", "-o", str(out))
    assert result.returncode == 0, result.stderr
    tmp_path = tmp_path / "new"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "img_0.png").st_mode) == 0o666 & ~umask
    for noise in ("oneDNN", "absl", "cuda", "I0000", "E0000", "W0000"):  # backend log lines stay out
        assert noise not in result.stderr, result.stderr
    texts = [metadata.read_parameters(str(tmp_path / f"img_{i}.png")) for i in range(2)]
    assert texts[0] == ("a red circle\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a, CFG scale: 7, "
                        "Seed: 7, Size: 64x64, Model: tiny")
    assert "Seed: 8," in texts[1]
    assert texts[0] in result.stdout and texts[1] in result.stdout
    info = run("info", str(tmp_path / "img_1.png"))
    assert info.returncode == 0 and "Seed: 8" in info.stdout and "negative_prompt: blurry" in info.stdout


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "num_steps"),
    (["-W", "100"], "width=100"),
    (["--sampling-method", "nope"], "sampler"),
    (["--cfg-scale", "nan"], "guidance"),
    (["-i", "/nonexistent/x.png"], "cannot read image"),
    (["--mask", "m.png"], "--mask needs --init-img"),
    (["-m", "no-such-model"], "unknown model"),
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
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "file.txt").write_text("a file")
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = run("generate", "-m", "tiny", "-p", "x", "-W", "64", "-H", "64", "--steps", "2",
                 "-o", str(tmp_path / "o.png"), *args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("sd-keras: error:")]
    assert len(lines) == 1 and message.replace("{tmp}", str(tmp_path)) in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]


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
}


@pytest.mark.once
@pytest.mark.parametrize("name", LIGHT_COMMANDS)
def test_help_info_and_argument_errors_import_no_backend(tmp_path, name):
    png = tmp_path / "x.png"
    metadata.save_png(np.zeros((8, 8, 3), np.uint8), str(png), "a cat\nSteps: 3, Seed: 1")
    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    argv = [arg.replace("{png}", str(png)).replace("{configs}", configs) for arg in LIGHT_COMMANDS[name]]
    code = textwrap.dedent(f"""
        import sys
        from sd_keras import cli
        try:
            status = cli.main({argv!r})
        except SystemExit as exit:
            status = exit.code
        loaded = sorted(m for m in ("keras", "tensorflow", "jax", "torch") if m in sys.modules)
        print("RESULT", status, loaded, file=sys.stderr)
    """)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    status, loaded = result.stderr.strip().splitlines()[-1].split(" ", 2)[1:]
    assert loaded == "[]", result.stderr
    expected = 0 if "help" in name or name in ("version", "info") else 2
    assert status == str(expected), result.stderr
    if expected == 2:
        assert "error:" in result.stderr and "Traceback" not in result.stderr
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert cpu < 2.0, f"{name}: {cpu:.2f} s of CPU"


def test_export_destination_may_have_missing_parent_folders(tmp_path):
    from sd_keras.export import bundle

    destination = tmp_path / "bundles" / "x"
    assert bundle.check_destination(str(destination)) == str(destination)
    assert list(tmp_path.iterdir()) == []  # created with the bundle, not by the check
    with pytest.raises(bundle.BundleError, match=f"cannot write {tmp_path}/file/x: {tmp_path}/file is not a folder"):
        (tmp_path / "file").write_text("x")
        bundle.check_destination(str(tmp_path / "file" / "x"))


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


def test_verbose_is_accepted_before_and_after_the_command():
    parser = cli.build_parser()
    assert parser.parse_args(["--verbose", "info", "x.png"]).verbose
    assert parser.parse_args(["generate", "-p", "x", "--verbose"]).verbose
    assert not parser.parse_args(["generate", "-p", "x"]).verbose


def test_version():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"sd-keras {sd_keras.__version__}"


def test_export_modes_in_help_are_quantize_modes():
    from sd_keras.cli import export as export_cli
    from sd_keras.export import quantize

    assert export_cli.QUANTIZE_MODES == quantize.MODES


def test_default_model_is_the_shipped_demo_model(tmp_path):
    result = run("generate", "-p", "a red circle on a blue background", "--steps", "4", "-o", str(tmp_path / "o.png"))
    assert result.returncode == 0, result.stderr
    assert "Size: 128x128, Model: shapes" in metadata.read_parameters(str(tmp_path / "o.png"))


def test_info_without_parameters(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    assert cli.main(["info", str(tmp_path / "plain.png")]) == 2


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.once
def test_legacy_ckpt_with_code_is_refused_in_one_line_of_our_own(tmp_path):
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
        result = run("convert", str(tmp_path / name), "-o", str(tmp_path / "out"))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr  # no torch warning, no advice
        assert lines[0].startswith(f"sd-keras: error: {tmp_path / name}: refusing to load: the pickle "), lines[0]
        if name != "protocol4.ckpt":  # torch stops at protocol 4's first opcode, before it reaches the global
            assert "references the global posix.system" in lines[0], lines[0]
        assert "weights_only" not in lines[0] and "Re-running" not in lines[0]
    assert not marker.exists() and not (tmp_path / "out").exists()
