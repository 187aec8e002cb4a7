"""Atomic, durable local files: the one temp-file-then-rename helper every writer of local files uses.

    with atomic_write(path) as f:      # a hidden temporary file in path's folder
        f.write(data)                  # on success: fsync the file, rename it to path, fsync the folder
                                       # on any error: the temporary file is removed, path is untouched

The rename is the commit point: after a crash or power loss a reader sees the old file or the whole new one,
never a part (the fsync of the file before the rename and of the folder after it make that hold on disk too).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path

FULL = (errno.ENOSPC, errno.EDQUOT)  # a full filesystem, or the user's quota on it

TMP_MARK = ".mllib-tmp-"  # a hidden temporary name: .NAME.mllib-tmp-XXXXXXXX, never listed as an object


def is_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in FULL


def no_space(path: str | os.PathLike, needed: int | None = None) -> str:
    """One line for a full filesystem: where, how much the write needed and how much is free, and what to do."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = f"{shutil.disk_usage(probe).free:,} bytes free"
    except OSError:
        free = "free space unknown"
    need = f"{needed:,} bytes needed, " if needed else ""
    return (f"no space left on the filesystem of {path} ({need}{free}); free some space or choose another folder, "
            f"then re-run the same command (nothing was written under a final name)")


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")


def fsync_dir(folder: str | os.PathLike) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path) -> None:
    """Rename a finished, fsynced temporary file into place and make the rename durable."""
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        commit(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
