"""Releasing clean file pages after start-up: which mappings are advised, and a private file
mapping's resident pages really go (read back intact on the next touch)."""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

import pytest

from edge_agent.service.pages import read_only_file_mappings, release_file_pages

PAGE = mmap.PAGESIZE
PAGES = 256
MAPS = """\
00400000-00452000 r-xp 00000000 08:02 173521     /usr/bin/python3.11
00652000-00653000 rw-p 00052000 08:02 173521     /usr/bin/python3.11
7f00aa000000-7f00aa100000 r--p 00000000 08:02 99  /lib/x86_64-linux-gnu/libc.so.6
7f00ab000000-7f00ab001000 r--s 00000000 08:02 98  /tmp/with space/data.bin
7f00ac000000-7f00ac021000 rw-p 00000000 00:00 0
7f00ad000000-7f00ad001000 r--p 00000000 08:02 97  /tmp/gone.so (deleted)
7ffd1a7fe000-7ffd1a800000 r-xp 00000000 00:00 0    [vdso]
7ffd1a800000-7ffd1a802000 r--p 00000000 00:00 0    [vvar]
"""


def test_only_read_only_file_mappings_are_picked() -> None:
    got = read_only_file_mappings(MAPS)
    assert got == [
        (0x400000, 0x452000, "/usr/bin/python3.11"),
        (0x7F00AA000000, 0x7F00AA100000, "/lib/x86_64-linux-gnu/libc.so.6"),
        (0x7F00AB000000, 0x7F00AB001000, "/tmp/with space/data.bin"),
    ]


def _resident_kb(path: Path) -> int:
    """Rss of this process's mapping of ``path`` (from /proc/self/smaps)."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.endswith(str(path)):
            for follow in lines[i + 1 :]:
                if follow.startswith("Rss:"):
                    return int(follow.split()[1])
    raise AssertionError(f"{path} is not mapped")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc are Linux's")
def test_a_private_file_mapping_is_released(tmp_path: Path) -> None:
    path = tmp_path / "private.bin"
    with path.open("wb") as f:
        f.write(bytes(range(256)) * (PAGES * PAGE // 256))
        f.flush()
        os.fsync(f.fileno())  # clean pages: the kernel drops dirty ones only after writeback
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        total = sum(m[i] for i in range(0, len(m), PAGE))  # every page resident
        assert _resident_kb(path) == PAGES * PAGE // 1024
        result = release_file_pages()
        if result.failed == result.mappings:
            pytest.skip(f"this kernel refuses MADV_PAGEOUT: {result.error}")
        assert result.mappings >= 1
        assert result.bytes_advised >= PAGES * PAGE
        assert _resident_kb(path) < PAGES * PAGE // 1024 // 2  # only this process maps it
        assert sum(m[i] for i in range(0, len(m), PAGE)) == total  # read back from the file


def test_never_raises_where_it_cannot_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edge_agent.service.pages.MAPS", Path("/nonexistent/maps"))
    result = release_file_pages()
    assert result.mappings == 0
    assert "/nonexistent/maps" in result.error
