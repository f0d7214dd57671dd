"""The one atomic file write: a temp file in the target's folder, fsynced, renamed over the target with
``os.replace`` (then the folder is fsynced). A reader or a crash never sees a half-written file: the target
is absent, the previous version, or complete. The file gets the permissions of a plain ``open()`` (0666 less
the process umask, so 0644 under umask 022), not ``mkstemp``'s 0600. Torch-free: the folder runner and the
service use it too."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = ".pca-tmp-"  # temp files of an interrupted write; remove_stale_temps() deletes them
TEMP_SUFFIX = ".part"
_CHUNK = 1 << 20


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (``/proc/self/status`` on Linux);
    elsewhere set and restored once (racy only against threads creating files at that instant)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes | BinaryIO, cancel: threading.Event | None = None) -> None:
    """Write ``data`` (bytes, or a binary file object copied from its start in chunks) to ``path``.

    With ``cancel`` set before the rename, the temp file is removed and InterruptedError raised: the target
    keeps its previous state.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp creates 0600; a result file gets the user's umask like open() would
            os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, bytes | bytearray | memoryview):
                fh.write(data)
            else:
                data.seek(0)
                shutil.copyfileobj(data, fh, _CHUNK)
            fh.flush()
            os.fsync(fh.fileno())
        if cancel is not None and cancel.is_set():
            raise InterruptedError("interrupted before the output was renamed into place")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(folders: Iterable[Path]) -> int:
    """Delete temp files a killed writer left in ``folders``; returns how many."""
    removed = 0
    for folder in set(folders):
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed
