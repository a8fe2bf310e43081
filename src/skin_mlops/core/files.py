"""Files written whole or not at all: the one atomic-write helper of the package.

:func:`atomic_path` gives the writer a temporary path in the target's own folder (same file
system, so the rename is atomic), then, once the writer returns, flushes the file to disk
(``fsync``), renames it over the target with :func:`os.replace` and flushes the folder, so
the rename itself survives a power cut. Any exception (a full disk, a converter that
fails, Ctrl-C) removes the temporary file and leaves the previous target untouched. A
reader therefore sees the old file or the new one, never a mix; a SIGKILL mid-write can
leave a ``.<name>.<pid>-<random>.tmp`` file behind, never a half-written target.

:func:`atomic_write_bytes` and :func:`atomic_write_text` are the common cases. Pass
``fsync=False`` for a cache whose entries are checked when read (a file lost to a power
cut is simply fetched again): ``fsync`` costs milliseconds per file.

Folders published as a whole (the model export, the registry's model cache) keep their
own staging-folder swap; the files inside a staging folder need no atomic write.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(path: Path, suffix: str = "") -> Path:
    """A fresh name beside ``path``: ``.<name>.<pid>-<random>.tmp<suffix>`` (not created).

    The name starts with a dot (hidden from globs such as ``*.jpg``) and carries the pid, so
    what a killed process left behind is easy to recognise.
    """
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp{suffix}")


def fsync_path(path: Path) -> None:
    """Flush a written file's data to disk (opened read-only: the writer has closed it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # no directory handles on this platform
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename still happened
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str, *, suffix: str = "", fsync: bool = True) -> Iterator[Path]:
    """``with atomic_path(target) as tmp: write(tmp)`` replaces ``target`` atomically.

    The writer must create the file at ``tmp`` (any library that takes a file name will
    do); when the block exits normally, ``tmp`` is fsynced and renamed over ``target``.
    The target's folder must exist.

    Args:
        path: the file to replace (or create).
        suffix: appended to the temporary name, for writers that insist on an extension
            (Keras wants ``.weights.h5``).
        fsync: flush the file and its folder to disk (off for caches checked on read).

    Raises:
        Whatever the writer raised (the temporary file is removed first), or the
        :class:`OSError` of the flush or the rename.
    """
    target = Path(path)
    temp = temporary_sibling(target, suffix)
    try:
        yield temp
        if fsync:
            fsync_path(temp)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_directory(target.parent)


def atomic_write_bytes(path: Path | str, data: bytes, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, fsync=fsync) as temp, open(temp, "xb") as handle:
        handle.write(data)


def atomic_write_text(
    path: Path | str, text: str, *, encoding: str = "utf-8", fsync: bool = True
) -> None:
    """Replace ``path`` with ``text`` atomically (see :func:`atomic_path`)."""
    atomic_write_bytes(path, text.encode(encoding), fsync=fsync)
