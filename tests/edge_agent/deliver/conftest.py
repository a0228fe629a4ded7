"""Fixtures for the delivery tests: outboxes, uplinks, a real broker, and no leaked threads.

Everything is real: SQLite files in a tmp dir, a ``mosquitto`` process per test (from
``tests/broker.py``) and paho clients. Uplinks made through ``start_uplink`` are always
stopped, and a test fails if it leaves a paho or uplink thread running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import mosquitto  # noqa: F401 (the fixture, re-exported for these tests)
from deliver_support import MACHINE, UplinkFactory

from edge_agent.deliver.config import MqttConfig, OutboxConfig
from edge_agent.deliver.mqtt import MqttUplink
from edge_agent.deliver.outbox import Outbox

THREAD_PREFIXES = ("paho-mqtt-client-", "edge-mqtt-uplink")
THREAD_EXIT_WAIT_S = 3.0

@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "events.db", OutboxConfig(), deliver=True)
    yield box
    box.close()


@pytest.fixture
def start_uplink() -> Iterator[UplinkFactory]:
    """``start_uplink(cfg, outbox, health=None, **kw)``: a started uplink, stopped at
    teardown if the test did not stop it."""
    made: list[MqttUplink] = []

    def start(
        cfg: MqttConfig, box: Outbox, health: Callable[[], dict[str, object]] | None = None,
        **kw: Any,
    ) -> MqttUplink:
        uplink = MqttUplink(cfg, MACHINE, box, health or dict, **kw)
        uplink.start()
        made.append(uplink)
        return uplink

    yield start
    for uplink in made:
        uplink.stop(0.0)


def _ours() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIXES)}


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    """Fail a test that leaves an uplink or paho network thread behind."""
    before = _ours()
    yield
    deadline = time.monotonic() + THREAD_EXIT_WAIT_S
    while (left := _ours() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"test left threads running: {sorted(t.name for t in left)}"
