import hashlib
import os
import pathlib

import pytest

from sd_keras.weights import download


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _published(tmp_path, name, data):
    src = tmp_path / "server" / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(data)
    return download.RemoteFile(name, src.as_uri(), hashlib.sha256(data).hexdigest())


def test_downloads_verifies_and_caches(tmp_path, cache):
    remote = _published(tmp_path, "a.h5", b"weights" * 1000)
    (path,) = download.fetch([remote], "sd-v1")
    assert pathlib.Path(path).read_bytes() == b"weights" * 1000
    assert pathlib.Path(path).parent == cache / "sd-v1"
    os.remove(tmp_path / "server" / "a.h5")  # the cached copy is used from now on
    assert download.fetch([remote], "sd-v1") == [path]


def test_corrupted_download_never_lands(tmp_path, cache):
    remote = _published(tmp_path, "a.h5", b"good")
    (tmp_path / "server" / "a.h5").write_bytes(b"goo")  # truncated on the server
    with pytest.raises(download.HashMismatchError, match="sha256"):
        download.fetch([remote], "sd-v1")
    assert not any((cache / "sd-v1").iterdir())  # no partial or bad file left behind


def test_corrupted_cache_file_is_removed(tmp_path, cache):
    remote = _published(tmp_path, "a.h5", b"good")
    (path,) = download.fetch([remote], "sd-v1")
    pathlib.Path(path).write_bytes(b"bad!")
    with pytest.raises(download.HashMismatchError):
        download.fetch([remote], "sd-v1")
    assert not os.path.exists(path)
    assert download.fetch([remote], "sd-v1") == [path]  # downloaded again


def test_offline_error_names_every_missing_file(tmp_path, cache):
    ok = _published(tmp_path, "ok.h5", b"x")
    gone = [download.RemoteFile(n, (tmp_path / "nowhere" / n).as_uri(), "0" * 64) for n in ("b.h5", "c.h5")]
    with pytest.raises(download.WeightsUnavailableError) as info:
        download.fetch([ok] + gone, "sd-v2")
    message = str(info.value)
    for remote in gone:
        assert remote.name in message and remote.url in message
    assert str(cache / "sd-v2") in message
    assert (cache / "sd-v2" / "ok.h5").exists()
