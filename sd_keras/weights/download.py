"""Weight files: download (with a progress bar and resume), sha256 verification and a local cache.

Files live in ``$SD_KERAS_CACHE`` (default ``~/.cache/sd_keras``), one sub-folder per preset. A download goes to
``.<name>.<sha256 prefix>.part`` in that folder and is hashed while it streams; it is moved into place only when
the sha256 matches, so the cache never holds a partial or corrupted file under the real name. An interrupted
download (network error, Ctrl-C, a killed process) keeps its ``.part`` file, and the next ``fetch`` asks the
server for the rest only (an HTTP ``Range`` request; a server that ignores it sends the whole file again).

A verified file gets a stamp beside it, ``.<name>.verified`` (its sha256, size, modification time and when it
was checked); later loads trust the file without hashing it again as long as its size and modification time are
unchanged. A file put in the folder by hand, or changed since, is hashed once (and stamped if it matches). As in
git's index, a stamp is not trusted while the file's modification time lies within two seconds of the check
(a change in the same clock tick would leave size and time unchanged): such a file is hashed once more later.

The KerasCV weights are files of Hugging Face Hub repositories, but plain HTTPS downloads of their ``resolve``
URLs are used rather than ``huggingface_hub.hf_hub_download``: that one keeps a partial download in a
process-unique temporary file that it deletes when the download fails, so an interrupted download of a
multi-gigabyte file could not be resumed by the next run, and it would add its own cache layout beside the
folder that the offline error message tells users to fill by hand.
"""

import dataclasses
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request

from sd_keras import files as _files
from sd_keras.errors import InputError
from sd_keras.paths import CACHE_ENV, cache_dir  # noqa: F401  (the cache folder is sd_keras.paths's)

_CHUNK = 1 << 20
_RACY_NS = 2_000_000_000  # file times can be as coarse as 2 s (FAT); a jiffy on Linux file systems


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One published weight file: where it comes from and what it must hash to."""

    name: str
    url: str
    sha256: str


class WeightsUnavailableError(RuntimeError):
    """Raised when weight files are neither cached nor downloadable; the message says how to fix it."""


class HashMismatchError(InputError):
    """Raised when a file's sha256 differs from the published one (a bad file: an input error, exit 2 / 422)."""


def sha256_of(path, digest=None):
    """The sha256 of a file (hex); ``digest``: a hashlib object to continue instead of a new one."""
    digest = digest or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ verified stamps
def stamp_path(path):
    """Where the record of ``path``'s verified sha256 lives."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.verified")


def _file_identity(path):
    status = os.stat(path)
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns}


def _stamp(path, sha256):
    _files.write_json(stamp_path(path), {"sha256": sha256, **_file_identity(path), "checked_ns": time.time_ns()})


def _stamped(path, sha256):
    """True when ``path`` was verified to hash to ``sha256`` and has not changed since (size and mtime)."""
    try:
        with open(stamp_path(path), encoding="utf-8") as f:
            record = json.load(f)
        identity = _file_identity(path)
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict) and record.get("sha256") == sha256
            and all(record.get(key) == value for key, value in identity.items())
            and isinstance(record.get("checked_ns"), int)
            and identity["mtime_ns"] + _RACY_NS < record["checked_ns"])


def _discard(*paths):
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------------------------------- download
def partial_path(dest, remote):
    """The ``.part`` file of an unfinished download of ``remote`` to ``dest`` (tied to the expected sha256)."""
    return os.path.join(os.path.dirname(dest), f".{remote.name}.{remote.sha256[:16]}.part")


def _open_response(remote, offset, timeout):
    """``(response, offset)``: the server's answer from byte ``offset`` on (0 if it does not honour Range)."""
    headers = {"User-Agent": "sd_keras", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(remote.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the part is no prefix of this file any more: start over
            error.close()
            return _open_response(remote, 0, timeout)
        raise
    if offset and not (response.status == 206 and (response.headers.get("Content-Range") or "").startswith(
            f"bytes {offset}-")):
        offset = 0  # the whole file came back (no Range support): write it from the start
    return response, offset


def _progress_bar(remote, total, initial, progress):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=remote.name,
                file=sys.stderr, leave=False, disable=None if progress is None else not progress)


def _download(remote, dest, timeout, progress):
    folder = os.path.dirname(dest)
    os.makedirs(folder, exist_ok=True)
    part = partial_path(dest, remote)
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    response, offset = _open_response(remote, offset, timeout)
    with response:
        digest = hashlib.sha256()
        if offset:
            with open(part, "rb") as f:  # the bytes already there, up to where the server continues
                remaining = offset
                while remaining:
                    block = f.read(min(_CHUNK, remaining))
                    if not block:
                        break
                    digest.update(block)
                    remaining -= len(block)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        with open(part, "r+b" if offset else "wb") as out, _progress_bar(remote, total, offset, progress) as bar:
            out.seek(offset)
            out.truncate()
            for block in iter(lambda: response.read(_CHUNK), b""):
                digest.update(block)
                out.write(block)
                bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
    if total is not None and os.path.getsize(part) != total:
        raise http.client.IncompleteRead(b"", total - os.path.getsize(part))
    if digest.hexdigest() != remote.sha256:
        _discard(part)
        raise HashMismatchError(
            f"{remote.name}: downloaded from {remote.url} but its sha256 is {digest.hexdigest()}, "
            f"expected {remote.sha256}; the file was discarded"
        )
    os.replace(part, dest)
    _stamp(dest, remote.sha256)


def _cached(remote, dest):
    """True when ``dest`` holds ``remote``: trusted by its stamp, else hashed once (and stamped)."""
    if not os.path.exists(dest):
        return False
    if _stamped(dest, remote.sha256):
        return True
    actual = sha256_of(dest)
    if actual != remote.sha256:
        _discard(dest, stamp_path(dest))
        raise HashMismatchError(
            f"{dest}: sha256 is {actual}, expected {remote.sha256}; the corrupted file was removed, "
            "run again to download it"
        )
    _stamp(dest, remote.sha256)
    return True


def fetch(files, subdir, *, timeout=60.0, progress=None):
    """Return local paths for ``files`` (RemoteFile list), downloading what the cache lacks.

    ``progress``: a progress bar on stderr per download (default: when stderr is a terminal).

    Raises:
        WeightsUnavailableError: some files could not be downloaded (no network, 404, an interrupted transfer,
            ...). The message names every missing file, its URL and the folder to copy it into; what an
            interrupted download received is kept and the next call resumes it.
        HashMismatchError: a downloaded or cached file does not match its published sha256 (a cached file
            that fails is removed so the next call downloads it again).
    """
    folder = cache_dir(subdir)
    paths, missing = {}, []
    for remote in files:
        dest = os.path.join(folder, remote.name)
        if _cached(remote, dest):
            paths[remote.name] = dest
            continue
        try:
            _download(remote, dest, timeout, progress)
            paths[remote.name] = dest
        except HashMismatchError:
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
            missing.append((remote, error))
    if missing:
        lines = "\n".join(f"  {r.name}: {r.url}  ({type(e).__name__}: {e})" for r, e in missing)
        partial = [r.name for r, _ in missing if os.path.exists(partial_path(os.path.join(folder, r.name), r))]
        resume = (f"\nThe partial download of {', '.join(partial)} is kept: running again resumes it."
                  if partial else "")
        raise WeightsUnavailableError(
            f"could not download {len(missing)} weight file(s):\n{lines}\n"
            f"Download them by hand and put them in {folder} (or set {CACHE_ENV} to a folder that has "
            f"'{subdir}/<file>'); each is checked against its published sha256.{resume}"
        )
    return [paths[remote.name] for remote in files]
