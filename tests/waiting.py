"""Polling helpers shared by the tests that wait on threads, sockets and child processes."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_S = 0.02


def wait_for(cond: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """True as soon as ``cond()`` holds, False if it still does not after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(POLL_S)
    return cond()
