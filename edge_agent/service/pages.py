"""Give back the clean file pages start-up touched and the daemon will not touch again.

Called once by the agent after READY (``edge_agent.agent.Agent.start``). Start-up reads a lot
of shared-library code and read-only data once: the interpreter's, numpy's, LiteRT's, the
MQTT and Modbus stacks', pydantic-core's. Those pages stay resident and count in the
process's RSS (and against systemd's ``MemoryMax``) although steady state runs a small part
of them. They are clean copies of files on disk, so the kernel can drop them at no cost and
read back, on a fault, the few that are used again.

:func:`release_file_pages` asks for that with ``madvise(MADV_PAGEOUT)`` (Linux 5.4 and later)
over every file-backed mapping of this process that it cannot write (``r--p``, ``r-xp``):
never anonymous memory (the heap, numpy arrays), never a writable mapping (its pages may be
private copies that would need swap), never a special one (``[vdso]``, ``[stack]``). Pages
shared with another process are left where they are by the kernel. Where the kernel or the
platform refuses (not Linux, an older kernel, a seccomp filter), it reports why and the agent
goes on: this is an optimisation, not a requirement. ``EDGE_AGENT_PAGEOUT=0`` in the
environment skips it (``bench/agent_resources.py`` measures the daemon with and without).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAPS = Path("/proc/self/maps")
SWITCH_ENV = "EDGE_AGENT_PAGEOUT"  # "0": keep the pages (a measurement without the release)
MADV_PAGEOUT = 21  # linux/mman.h; Python 3.11's mmap module does not name it
READ_ONLY_PERMS = ("r--p", "r-xp", "r--s", "r-xs")  # readable, not writable
BYTES_PER_MB = 1_000_000


@dataclass(frozen=True)
class PagesReleased:
    """What one call asked the kernel to drop (the kernel decides what it actually drops)."""

    mappings: int  # file-backed read-only mappings advised
    bytes_advised: int  # their total size (not all of it was resident)
    failed: int  # mappings the kernel refused
    error: str  # why nothing was done or the first refusal; empty when all went through


def read_only_file_mappings(maps_text: str) -> list[tuple[int, int, str]]:
    """``(start, end, path)`` of every read-only file-backed mapping in ``/proc/<pid>/maps``
    text (lines: ``start-end perms offset dev inode path``)."""
    out: list[tuple[int, int, str]] = []
    for line in maps_text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or parts[1] not in READ_ONLY_PERMS:
            continue
        path = parts[5].strip()
        if not path.startswith("/") or path.endswith(" (deleted)"):
            continue  # anonymous, [vdso], [vvar], a file gone from disk
        start, _, end = parts[0].partition("-")
        out.append((int(start, 16), int(end, 16), path))
    return out


def release_file_pages() -> PagesReleased:
    """Advise ``MADV_PAGEOUT`` over this process's read-only file mappings; never raises."""
    if os.environ.get(SWITCH_ENV) == "0":
        return PagesReleased(0, 0, 0, f"skipped: {SWITCH_ENV}=0")
    if not sys.platform.startswith("linux"):
        return PagesReleased(0, 0, 0, f"not Linux ({sys.platform})")
    try:
        mappings = read_only_file_mappings(MAPS.read_text())
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError as e:
        return PagesReleased(0, 0, 0, f"cannot read {MAPS} or load libc: {e}")
    madvise = libc.madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    failed, first_error, advised = 0, "", 0
    for start, end, path in mappings:
        if madvise(start, end - start, MADV_PAGEOUT) != 0:
            err = ctypes.get_errno()
            failed += 1
            first_error = first_error or f"madvise(MADV_PAGEOUT) on {path}: {os.strerror(err)}"
        else:
            advised += end - start
    result = PagesReleased(len(mappings), advised, failed, first_error)
    if failed == len(mappings) and mappings:
        log.info("file pages not released (the kernel refused): %s", first_error)
    else:
        log.info(
            "released clean file pages: %d mappings, %.1f MB advised",
            len(mappings) - failed,
            advised / BYTES_PER_MB,
        )
    return result
