"""Atomic writes: whole files or nothing, with the permissions the umask gives (not mkstemp's 0600)."""
import json
import os
import stat

import numpy as np
import pytest

from sd_keras import files


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def leftovers(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


@pytest.mark.once
def test_files_and_folders_get_the_umask_modes(tmp_path, umask):
    with files.atomic_write(tmp_path / "a" / "b.bin") as handle:
        handle.write(b"data")
    assert mode(tmp_path / "a" / "b.bin") == 0o666 & ~umask
    assert mode(tmp_path / "a") == 0o777 & ~umask

    files.write_json(tmp_path / "c.json", {"x": 1})
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": 1}
    assert mode(tmp_path / "c.json") == 0o666 & ~umask

    def private_writer(name):  # a library that replaces the file it is given with a private one
        os.unlink(name)
        descriptor = os.open(name, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(descriptor, b"payload")
        os.close(descriptor)

    with files.atomic_path(tmp_path / "d.safetensors") as temporary:
        assert temporary.endswith(".safetensors") and os.path.exists(temporary)
        private_writer(temporary)
    assert (tmp_path / "d.safetensors").read_bytes() == b"payload"
    assert mode(tmp_path / "d.safetensors") == 0o666 & ~umask

    with files.atomic_folder(tmp_path / "folder") as staging:
        files.write_text(os.path.join(staging, "inner.txt"), "hi")
        os.mkdir(os.path.join(staging, "sub"))
    assert mode(tmp_path / "folder") == 0o777 & ~umask
    assert mode(tmp_path / "folder" / "inner.txt") == 0o666 & ~umask
    assert mode(tmp_path / "folder" / "sub") == 0o777 & ~umask
    assert leftovers(tmp_path) == []


@pytest.mark.once
def test_a_failed_write_leaves_the_old_content_and_no_temporaries(tmp_path):
    target = tmp_path / "t.txt"
    files.write_text(target, "old")
    with pytest.raises(RuntimeError):
        with files.atomic_write(target, "w") as handle:
            handle.write("half")
            raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        with files.atomic_path(target):
            raise RuntimeError("killed")
    assert target.read_text() == "old"

    folder = tmp_path / "f"
    with files.atomic_folder(folder) as staging:
        files.write_text(os.path.join(staging, "v"), "1")
    with pytest.raises(RuntimeError):
        with files.atomic_folder(folder) as staging:
            files.write_text(os.path.join(staging, "v"), "2")
            raise RuntimeError("killed")
    assert (folder / "v").read_text() == "1"
    with files.atomic_folder(folder) as staging:  # replacing an existing folder
        files.write_text(os.path.join(staging, "w"), "3")
    assert sorted(os.listdir(folder)) == ["w"]
    assert leftovers(tmp_path) == []

    target.write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        with files.atomic_folder(target):
            pass
    assert target.read_text() == "x" and leftovers(tmp_path) == []


@pytest.mark.once
def test_temporaries_of_finds_what_a_killed_write_left(tmp_path):
    target = tmp_path / "ckpt.safetensors"
    keep = tmp_path / ".other.0123456789ab.tmp"
    keep.write_text("not ours")
    context = files.atomic_path(target)
    temporary = context.__enter__()  # a writer killed here never reaches the rename
    assert files.temporaries_of(target) == [temporary]
    assert files.temporaries_of(tmp_path / "other") == [str(keep)]


@pytest.mark.once
def test_package_writers_use_the_umask(tmp_path, umask):
    from sd_keras import metadata
    from sd_keras.tokenizer import CLIPTokenizer

    metadata.save_png(np.zeros((4, 4, 3), np.uint8), str(tmp_path / "png" / "x.png"), "params")
    assert mode(tmp_path / "png" / "x.png") == 0o666 & ~umask
    assert metadata.read_parameters(str(tmp_path / "png" / "x.png")) == "params"

    merges = CLIPTokenizer().save_merges(tmp_path / "merges.txt.gz")
    assert mode(merges) == 0o666 & ~umask

    from sd_keras.export.bundle import write_json_atomic

    write_json_atomic(str(tmp_path / "manifest.json"), {"a": 1})
    assert mode(tmp_path / "manifest.json") == 0o666 & ~umask
    assert leftovers(tmp_path) == []


def test_saved_folder_uses_the_umask(tmp_path, umask):
    from sd_keras import StableDiffusion
    from sd_keras.weights import saved

    sd = StableDiffusion.from_preset("tiny")
    folder = saved.save_pretrained(sd, str(tmp_path / "model"))
    assert mode(folder) == 0o777 & ~umask
    for name in os.listdir(folder):
        assert mode(os.path.join(folder, name)) == 0o666 & ~umask, name
    saved.save_pretrained(sd, folder)  # replacing it keeps the modes and leaves nothing behind
    assert mode(folder) == 0o777 & ~umask and leftovers(tmp_path) == []
