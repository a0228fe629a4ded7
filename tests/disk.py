"""A small real disk for storage-fault tests and the fault soak: a tmpfs that can be filled.

Tests import it as ``from disk import fill`` (``tests/`` is on sys.path) and get a mounted
disk from the ``small_disk`` fixture (re-exported by the top conftest). Mounting needs root or
CAP_SYS_ADMIN, which this project's CI has; elsewhere the tests that need it skip and say why.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

DISK_BYTES = 4 << 20  # the small "SD card": room for an outbox, then filled up
FILL_CHUNK_BYTES = 64 << 10


def mount_tmpfs(path: Path, size_bytes: int = DISK_BYTES) -> str | None:
    """Mount a tmpfs of ``size_bytes`` at ``path`` (created); None, or why it failed."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
            capture_output=True, text=True, check=False,
        )
    except FileNotFoundError:
        return "no `mount` command"
    if done.returncode != 0:
        return f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}"
    return None


def unmount(path: Path) -> bool:
    """Unmount ``path``; False if it was busy (then it is detached lazily all the same)."""
    if subprocess.run(["umount", str(path)], check=False).returncode == 0:
        return True
    subprocess.run(["umount", "-l", str(path)], check=False)  # never leave it mounted
    return False


def fill(directory: Path) -> Path:
    """Write a filler file until the file system has not one byte left; returns it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    chunk = b"\0" * FILL_CHUNK_BYTES
    try:
        while True:
            os.write(fd, chunk)  # a short write first, then ENOSPC
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return filler


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A freshly mounted tmpfs of DISK_BYTES, unmounted afterwards."""
    mnt = tmp_path / "disk"
    why = mount_tmpfs(mnt)
    if why is not None:
        pytest.skip(f"{why}: cannot make a small disk to fill up")
    try:
        yield mnt
    finally:
        if not unmount(mnt):
            pytest.fail(f"{mnt} was still busy at the end of the test (an open outbox?)")
