"""Atomic writes for every file and folder sd_keras creates.

A reader (another process, a server, a resumed run) sees either the old file or folder or the complete new
one, never a half-written one: the content goes into a temporary sibling that is renamed onto the target at
the end. The result gets the permissions an ordinary ``open()`` / ``os.mkdir`` would give under the current
umask (0644 files and 0755 folders under umask 022), not the private 0600 / 0700 of ``tempfile.mkstemp`` /
``mkdtemp``: the temporary is created with mode 0666 / 0777 and the kernel applies the umask, so the umask is
never read or changed (``os.umask`` is process-wide and racy in a threaded server).

This module depends on the standard library only, so any part of the package (the CLI before Keras is
imported, the server, export) can use it.

Example:
    >>> from sd_keras import files
    >>> with files.atomic_write("out/settings.json", "w", encoding="utf-8") as handle:   # doctest: +SKIP
    ...     handle.write("{}")
    >>> with files.atomic_path("out/model.safetensors") as temporary:                    # doctest: +SKIP
    ...     save_file(tensors, temporary)          # a writer that wants a file name
    >>> with files.atomic_folder("out/bundle") as staging:                               # doctest: +SKIP
    ...     files.write_json(os.path.join(staging, "manifest.json"), manifest)
"""

import contextlib
import glob
import json
import os
import secrets
import shutil
import stat

from sd_keras.errors import InputError

__all__ = ["atomic_write", "atomic_path", "atomic_folder", "new_folder_beside", "replace_folder", "write_bytes",
           "write_text", "write_json", "check_writable", "temporaries_of", "TEMPORARY_TAG"]

# Temporaries are named ".<target name>.<random>.tmp<extension>" (folders: no extension) so that a writer
# killed mid-way leaves files that ``temporaries_of`` finds and that never look like finished outputs.
TEMPORARY_TAG = ".tmp"
_OLD_TAG = ".old"
_ATTEMPTS = 100


def _temporary_name(path, tag, extension=""):
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(folder, f".{name}.{secrets.token_hex(6)}{tag}{extension}")


def _create_file(path, extension):
    """Create an empty temporary sibling of ``path`` (exclusively, mode 0666 less the umask); (fd, name)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(_ATTEMPTS):
        name = _temporary_name(path, TEMPORARY_TAG, extension)
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file next to {path}")


def _make_folder(path, tag):
    for _ in range(_ATTEMPTS):
        name = _temporary_name(path, tag)
        try:
            os.mkdir(name, 0o777)
            return name
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary folder next to {path}")


def _parent(path):
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(folder, exist_ok=True)
    return folder


def _discard(name):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


def _fsync_file(name):
    # Without it a crash soon after the rename can leave an empty file under the final name on some file systems.
    descriptor = os.open(name, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems (and Windows on read-only handles) cannot sync; the rename still holds
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_write(path, mode="wb", *, encoding=None, newline=None):
    """Open a new file for ``path``; when the ``with`` block ends without an error it replaces ``path``.

    Missing parent folders are created. On an error the temporary file is removed and ``path`` is untouched.

    Args:
        path: the file to (re)write.
        mode: ``"wb"`` (default) or ``"w"`` (text; pass ``encoding``).
        encoding, newline: as for ``open()`` in text mode.

    Example:
        >>> with atomic_write("notes.txt", "w", encoding="utf-8") as handle:   # doctest: +SKIP
        ...     handle.write("hello")
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    _parent(path)
    descriptor, temporary = _create_file(path, "")
    try:
        with os.fdopen(descriptor, mode, encoding=encoding, newline=newline) as handle:
            yield handle
            handle.flush()
            with contextlib.suppress(OSError):
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        _discard(temporary)
        raise


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary file name next to ``path`` for a writer that wants a name; it replaces ``path`` after.

    The temporary keeps ``path``'s extension (PIL and others choose the format from it) and exists, empty,
    when the block starts. If the writer recreated it with other permissions, they are set back to the
    umask's. Missing parent folders are created; on an error the temporary is removed and ``path`` untouched.

    Example:
        >>> with atomic_path("weights.safetensors") as temporary:   # doctest: +SKIP
        ...     save_file(tensors, temporary)
    """
    path = os.fspath(path)
    _parent(path)
    descriptor, temporary = _create_file(path, os.path.splitext(path)[1])
    try:
        wanted = os.fstat(descriptor).st_mode & 0o7777
    finally:
        os.close(descriptor)
    try:
        yield temporary
        if not os.path.isfile(temporary):
            raise FileNotFoundError(f"writing {path}: the writer left no file at {temporary}")
        if os.stat(temporary).st_mode & 0o7777 != wanted:
            os.chmod(temporary, wanted)
        _fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        _discard(temporary)
        raise


@contextlib.contextmanager
def atomic_folder(path):
    """Yield a new empty folder next to ``path``; when the block ends without an error it becomes ``path``.

    An existing ``path`` (a folder) is replaced as in ``replace_folder``; the caller decides beforehand whether
    replacing it is allowed. Missing parent folders are created. On an error the new folder is deleted and
    ``path`` is untouched.

    Example:
        >>> with atomic_folder("my_model") as staging:   # doctest: +SKIP
        ...     write_json(os.path.join(staging, "config.json"), config)
    """
    path = os.fspath(path)
    _parent(path)
    staging = _make_folder(path, TEMPORARY_TAG)
    try:
        yield staging
        replace_folder(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def new_folder_beside(path):
    """Create and return a new empty folder next to ``path`` (parents created) to be finished and then passed
    to ``replace_folder``; the caller deletes it on failure. ``atomic_folder`` does all of this in a ``with``."""
    _parent(path)
    return _make_folder(path, TEMPORARY_TAG)


def replace_folder(staging, destination):
    """Move the finished folder ``staging`` (same file system) onto ``destination``; returns ``destination``.

    An existing ``destination`` is renamed aside first and deleted once the new folder is in place, so a
    reader sees the old or the new folder, never a mix; if the final rename fails the old one is put back.

    Raises:
        FileExistsError: ``destination`` exists and is not a folder (or is a link).
    """
    destination = os.path.abspath(os.fspath(destination))
    _give_umask_modes(staging)
    old = None
    if os.path.lexists(destination):
        if os.path.islink(destination) or not os.path.isdir(destination):
            raise FileExistsError(f"{destination} exists and is not a folder")
        old = _make_folder(destination, _OLD_TAG)
        os.rmdir(old)
        os.rename(destination, old)
    try:
        os.rename(staging, destination)
    except BaseException:
        if old is not None:
            os.rename(old, destination)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return destination


def _give_umask_modes(root):
    """Give ``root`` and everything in it the modes a plain mkdir / open would have (umask applied).

    Libraries writing into a staging folder may create private files (safetensors writes 0600) and
    ``tempfile.mkdtemp`` makes 0700 folders; the finished folder is shared like any other output.
    """
    probe = _make_folder(root, ".mode")
    try:
        folder_mode = stat.S_IMODE(os.stat(probe).st_mode)
    finally:
        os.rmdir(probe)
    file_mode = folder_mode & 0o666
    os.chmod(root, folder_mode)
    for folder, subfolders, names in os.walk(root):
        for name in subfolders:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, folder_mode)
        for name in names:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            executable = stat.S_IMODE(os.stat(path).st_mode) & 0o100
            os.chmod(path, file_mode | (folder_mode & 0o111 if executable else 0))


def write_bytes(path, data):
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return path


def write_text(path, text, *, encoding="utf-8", newline="\n"):
    """Write ``text`` to ``path`` atomically (UTF-8, ``\\n`` line ends by default); returns ``path``."""
    with atomic_write(path, "w", encoding=encoding, newline=newline) as handle:
        handle.write(text)
    return path


def write_json(path, data, *, indent=2, **dump_options):
    """Write ``data`` as JSON (with a final newline) to ``path`` atomically; returns ``path``."""
    with atomic_write(path, "w", encoding="utf-8", newline="\n") as handle:
        json.dump(data, handle, indent=indent, **dump_options)
        handle.write("\n")
    return path


def check_writable(path, *, folder=False):
    """Raise ``InputError`` naming ``path`` if an atomic write could not create it; nothing is left behind.

    Cheap (no parent folder is created) so that a command can check its output before hours of work:
    ``path`` must not be an existing folder (``folder=False``) or an existing non-folder (``folder=True``), its
    nearest existing ancestor must be a folder, and a file must be creatable there (tried, then removed: the
    permission bits alone do not tell, e.g. for ``/proc`` or a read-only mount).
    """
    shown = os.fspath(path)
    absolute = os.path.abspath(shown)
    if folder and os.path.lexists(absolute) and not os.path.isdir(absolute):
        raise InputError(f"cannot write {shown}: it exists and is not a folder")
    if not folder and os.path.isdir(absolute):
        raise InputError(f"cannot write {shown}: it is a folder")
    ancestor = os.path.dirname(absolute)
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise InputError(f"cannot write {shown}: {ancestor} is not a folder")
    try:
        descriptor, probe = _create_file(os.path.join(ancestor, "write-check"), "")
    except OSError as error:
        raise InputError(f"cannot write {shown}: cannot create files in {ancestor} "
                         f"({error.strerror or error})") from None
    os.close(descriptor)
    _discard(probe)


def temporaries_of(path):
    """Temporary files or folders left next to ``path`` by writes of it that were killed mid-way.

    Only call this when no other process may be writing ``path`` at the same time.
    """
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    pattern = f".{glob.escape(name)}.{'[0-9a-f]' * 12}"
    found = glob.glob(os.path.join(glob.escape(folder), pattern + TEMPORARY_TAG + "*"))
    found += glob.glob(os.path.join(glob.escape(folder), pattern + _OLD_TAG))
    return sorted(found)
