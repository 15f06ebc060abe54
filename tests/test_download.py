import hashlib
import json
import os
import pathlib
import time

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


# ------------------------------------------------------------------------------- over HTTP: resume, progress
class _Server:
    """A local HTTP server of ``files`` (name -> bytes) that honours ``Range: bytes=N-``; ``cut_after``: send
    only that many body bytes and drop the connection (an interrupted transfer). Records every request."""

    def __init__(self, files):
        import http.server
        import threading

        self.files, self.cut_after, self.requests = files, None, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                data = server.files.get(self.path.lstrip("/"))
                server.requests.append({"path": self.path, "range": self.headers.get("Range"), "sent": 0})
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                ranged = self.headers.get("Range")
                if ranged:
                    start = int(ranged.removeprefix("bytes=").rstrip("-"))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    body = body[: server.cut_after]
                self.wfile.write(body)
                server.requests[-1]["sent"] = len(body)
                if server.cut_after is not None:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def remote(self, name):
        return download.RemoteFile(name, f"{self.base}/{name}", hashlib.sha256(self.files[name]).hexdigest())

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    data = bytes(range(256)) * 4096  # 1 MiB
    running = _Server({"unet.h5": data})
    yield running
    running.close()


def test_interrupted_download_resumes_with_a_range_request(server, cache):
    remote = server.remote("unet.h5")
    server.cut_after = 300_000
    with pytest.raises(download.WeightsUnavailableError) as info:
        download.fetch([remote], "sd-v1", timeout=10)
    assert "unet.h5" in str(info.value) and "resumes" in str(info.value)
    assert not (cache / "sd-v1" / "unet.h5").exists()  # nothing under the real name
    part = download.partial_path(str(cache / "sd-v1" / "unet.h5"), remote)
    assert os.path.getsize(part) == 300_000
    server.cut_after, server.requests = None, []
    (path,) = download.fetch([remote], "sd-v1", timeout=10)
    assert pathlib.Path(path).read_bytes() == server.files["unet.h5"]
    assert server.requests == [{"path": "/unet.h5", "range": "bytes=300000-", "sent": 2**20 - 300_000}]
    assert not os.path.exists(part)


def test_a_stale_part_is_replaced_when_the_server_ignores_or_refuses_the_range(server, cache):
    remote = server.remote("unet.h5")
    part = download.partial_path(str(cache / "sd-v1" / "unet.h5"), remote)
    os.makedirs(os.path.dirname(part))
    pathlib.Path(part).write_bytes(b"x" * (2**20 + 5))  # longer than the file: 416, start over
    (path,) = download.fetch([remote], "sd-v1", timeout=10)
    assert pathlib.Path(path).read_bytes() == server.files["unet.h5"]
    assert [r["range"] for r in server.requests] == ["bytes=1048581-", None]


def test_progress_bar(server, cache, capsys):
    download.fetch([server.remote("unet.h5")], "sd-v1", timeout=10, progress=True)
    err = capsys.readouterr().err
    assert "unet.h5" in err and "1.00M" in err


def test_verified_file_is_not_hashed_again(tmp_path, cache, monkeypatch):
    remote = _published(tmp_path, "a.h5", b"weights" * 1000)
    (path,) = download.fetch([remote], "sd-v1")
    stamp = json.loads(pathlib.Path(download.stamp_path(path)).read_text())
    assert stamp["sha256"] == remote.sha256 and stamp["size"] == 7000
    past = time.time() - 60
    os.utime(path, (past, past))  # changed since the check: hashed once more, stamped again
    hashed = []
    real = download.sha256_of
    monkeypatch.setattr(download, "sha256_of", lambda p, *a: hashed.append(p) or real(p, *a))
    assert download.fetch([remote], "sd-v1") == [path] and hashed == [path]
    assert download.fetch([remote], "sd-v1") == [path] and hashed == [path]  # trusted: not hashed
    pathlib.Path(path).write_bytes(b"Weights" + b"weights" * 999)  # same size, new time: hashed, refused
    os.utime(path, (past - 10, past - 10))
    with pytest.raises(download.HashMismatchError):
        download.fetch([remote], "sd-v1")
    assert hashed == [path, path] and not os.path.exists(path) and not os.path.exists(download.stamp_path(path))
