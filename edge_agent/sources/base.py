"""What every sensor source is: a thread that reads one link and hands readings to a sink.

Sits at the start of the agent's pipeline. A source never blocks another: each runs in its
own thread, and a failing link (timeout, unplugged cable, dead slave) only delays that link,
with capped exponential backoff. The agent's sampler turns the sink's latest readings into
rows on the model's sample grid.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Protocol

from edge_agent.service.supervisor import TaskHealth, start_supervised


class ReadingSink(Protocol):
    """Receives readings; must be thread-safe (every source calls it from its own thread)."""

    def put(self, source: str, readings: Mapping[str, float], t: float) -> None:
        """``readings`` (channel -> engineering value, NaN if unreadable) taken at wall time
        ``t`` (``time.time()`` seconds)."""

    def put_row(
        self,
        source: str,
        t: float,
        readings: Mapping[str, float],
        stop: threading.Event | None = None,
    ) -> bool:
        """A whole row with its own timestamp (recorded data: the replay source); may wait
        while the consumer is behind; False if ``stop`` was set first."""


class SourceCounters:
    """Monotonic counters a source keeps for metrics and the heartbeat (thread-safe enough:
    each counter is written by its source's thread only and read as a snapshot)."""

    def __init__(self) -> None:
        self.polls = 0  # requests or lines attempted
        self.poll_errors = 0  # failed requests (after retries) or unreadable lines
        self.samples = 0  # channel values delivered
        self.reconnects = 0  # links re-opened
        self.malformed = 0  # frames or lines that did not parse

    def snapshot(self) -> dict[str, int]:
        return dict(vars(self))


class Source(ABC):
    """A link to sensors, polled or read in a thread of its own."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counters = SourceCounters()
        self.health = TaskHealth(f"source {name}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    @abstractmethod
    def channels(self) -> list[str]:
        """Channels this source delivers."""

    @abstractmethod
    def _run(self, sink: ReadingSink) -> None:
        """Read until ``self._stop`` is set; never raise for link trouble, count it."""

    def start(self, sink: ReadingSink) -> None:
        """Run :meth:`_run` in a supervised thread: restarted with backoff if it crashes."""
        self._stop.clear()
        self._thread = start_supervised(
            f"source-{self.name}", lambda: self._run(sink), self._stop, self.health
        )

    def request_stop(self) -> None:
        """Ask the thread to finish without waiting (to stop several sources in parallel)."""
        self._stop.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to finish and wait up to ``timeout_s`` for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
