"""Every source test must stop what it starts: a polling thread left running would keep
talking to the next test's server."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from waiting import wait_for


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert wait_for(lambda: not (set(threading.enumerate()) - before), 3.0), (
        f"threads left behind: {set(threading.enumerate()) - before}"
    )
