"""Weight files: download, sha256 verification and a local cache.

Files live in ``$SD_KERAS_CACHE`` (default ``~/.cache/sd_keras``), one sub-folder per preset. A download goes to
a temporary file in that folder, is hashed while it streams, and is moved into place only when the sha256 matches,
so the cache never holds a partial or corrupted file. A file already in the cache is re-hashed before use.
"""

import dataclasses
import hashlib
import os
import tempfile
import urllib.error
import urllib.request

CACHE_ENV = "SD_KERAS_CACHE"
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One published weight file: where it comes from and what it must hash to."""

    name: str
    url: str
    sha256: str


class WeightsUnavailableError(RuntimeError):
    """Raised when weight files are neither cached nor downloadable; the message says how to fix it."""


class HashMismatchError(ValueError):
    """Raised when a file's sha256 differs from the published one."""


def cache_dir(*parts):
    """The cache folder (``$SD_KERAS_CACHE`` or ``~/.cache/sd_keras``), joined with ``parts``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "sd_keras")
    return os.path.join(root, *parts)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(remote, dest, timeout):
    folder = os.path.dirname(dest)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{remote.name}.", suffix=".part", dir=folder)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(remote.url, timeout=timeout) as response:
            for block in iter(lambda: response.read(_CHUNK), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != remote.sha256:
            raise HashMismatchError(
                f"{remote.name}: downloaded from {remote.url} but its sha256 is {digest.hexdigest()}, "
                f"expected {remote.sha256}; the file was discarded"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fetch(files, subdir, *, timeout=60.0):
    """Return local paths for ``files`` (RemoteFile list), downloading what the cache lacks.

    Raises:
        WeightsUnavailableError: some files could not be downloaded (no network, 404, ...). The message names
            every missing file, its URL and the folder to copy it into.
        HashMismatchError: a downloaded or cached file does not match its published sha256 (a cached file
            that fails is removed so the next call downloads it again).
    """
    folder = cache_dir(subdir)
    paths, missing = {}, []
    for remote in files:
        dest = os.path.join(folder, remote.name)
        if os.path.exists(dest):
            actual = sha256_of(dest)
            if actual != remote.sha256:
                os.remove(dest)
                raise HashMismatchError(
                    f"{dest}: sha256 is {actual}, expected {remote.sha256}; the corrupted file was removed, "
                    "run again to download it"
                )
            paths[remote.name] = dest
            continue
        try:
            _download(remote, dest, timeout)
            paths[remote.name] = dest
        except (urllib.error.URLError, OSError, ValueError) as error:
            if isinstance(error, HashMismatchError):
                raise
            missing.append((remote, error))
    if missing:
        lines = "\n".join(f"  {r.name}: {r.url}  ({type(e).__name__}: {e})" for r, e in missing)
        raise WeightsUnavailableError(
            f"could not download {len(missing)} weight file(s):\n{lines}\n"
            f"Download them by hand and put them in {folder} (or set {CACHE_ENV} to a folder that has "
            f"'{subdir}/<file>'); each is checked against its published sha256."
        )
    return [paths[remote.name] for remote in files]
