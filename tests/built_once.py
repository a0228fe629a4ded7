"""Session products built once per test run, also when pytest-xdist runs several workers.

Training the shared model, exporting its bundle or compiling the kernel module takes tens of
seconds; each xdist worker would otherwise do it again. :func:`built_once` gives every worker
the same directory under the run's common temporary root: the first worker to get the file
lock builds it, the others wait and then use what it built. A build that raises leaves no
``.done`` mark and no directory, so the next worker tries again (and fails the same way,
with its own error in its own test report).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def run_root(factory: pytest.TempPathFactory) -> Path:
    """The temporary directory all workers of this run share (the base one without xdist)."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def built_once(factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[Path, bool]]:
    """``(directory, already_built)`` for ``name``; build into the directory when not built.

    The directory does not exist when the caller must build it (so tools that refuse an
    existing output directory work); it is marked done when the ``with`` block succeeds.
    """
    root = run_root(factory)
    target = root / name
    done = root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if done.exists():
            yield target, True
            return
        shutil.rmtree(target, ignore_errors=True)
        try:
            yield target, False
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        done.touch()
