"""Files that survive a power cut: atomic replace with fsync, and reads that never follow links.

Used wherever the agent or the desk writes state a reader must find whole or not at all: the
OTA pointer and slots (``edge_agent.ota``), replay outputs, reports. A write goes to a temporary
file in the same directory, is flushed to the disk, renamed over the target, and the directory
is flushed so the rename itself is durable (ext4 and f2fs on SD cards otherwise may keep the
old name after a cut).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (new names, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the new one, never a mix.

    ``durable=False`` skips the fsyncs (outputs a person can regenerate, not device state).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def read_no_follow(directory: Path, name: str) -> bytes:
    """Read the regular file ``name`` inside ``directory`` without following a symlink there.

    ``name`` must be a plain file name; a link in its place raises ``OSError`` (ELOOP) instead
    of reading whatever it points at.
    """
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
    finally:
        os.close(dfd)
    with os.fdopen(fd, "rb") as f:
        return f.read()
