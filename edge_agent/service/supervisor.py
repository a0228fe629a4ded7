"""Supervised threads: a source or the uplink that crashes is restarted, counted and shown.

Every long-running thread of the agent (one per source link, the MQTT uplink) runs its body
through :func:`start_supervised`. An exception the body did not handle (a bug, or a fault
outside the set its author expected, such as ``termios.error`` from a vanishing USB adapter)
is logged with its traceback, counted in the thread's :class:`TaskHealth`, and the body is
started again after a capped exponential backoff, so one bad frame cannot end a thread for
good while the watchdog is still fed. A body that returns normally is finished (a replay
source at the end of its file), not restarted.

The agent reads each :class:`TaskHealth` for metrics and the status heartbeat, and stops
pinging the systemd watchdog when a thread has been down (crashing again and again) for longer
than its limit: then systemd restarts the whole agent, the remedy of last resort.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

from edge_agent.logs import Throttle

log = logging.getLogger("edge_agent.service.supervisor")

CRASH_LOG_EVERY_S = 60.0  # a crash loop logs its traceback at most this often

Clock = Callable[[], float]


@dataclass(frozen=True)
class RestartPolicy:
    """How a crashed thread is restarted."""

    initial_s: float = 1.0  # first wait after a crash
    max_s: float = 60.0  # cap of the doubling wait
    healthy_after_s: float = 30.0  # a run this long ends a crash loop (backoff starts over)


class TaskStatus(TypedDict):
    """One supervised thread, for metrics and the heartbeat."""

    running: bool  # the body is running now (not waiting to restart, not finished)
    crashes: int  # unhandled exceptions since start
    down_s: float  # seconds in the current crash loop (0 when healthy)
    last_error: str | None  # the latest crash, one line


class TaskHealth:
    """What a supervised thread reports about itself; read from any thread."""

    def __init__(self, name: str, policy: RestartPolicy | None = None, *,
                 clock: Clock = time.monotonic) -> None:
        self.name = name
        self.policy = policy or RestartPolicy()
        self._clock = clock
        self._lock = threading.Lock()
        self._crashes = 0
        self._last_error: str | None = None
        self._up_since: float | None = None  # start of the current run; None while not running
        self._loop_since: float | None = None  # first crash of the current crash loop

    def started(self) -> None:
        with self._lock:
            self._up_since = self._clock()

    def stopped(self) -> None:
        with self._lock:
            self._up_since = None
            self._loop_since = None

    def crashed(self, err: BaseException) -> None:
        with self._lock:
            now = self._clock()
            if self._loop_since is None or self._ran_healthy(now):
                self._loop_since = now
            self._up_since = None
            self._crashes += 1
            self._last_error = f"{type(err).__name__}: {err}"[:300]

    def down_for(self) -> float:
        """Seconds this thread has been crash-looping (0 when healthy or never crashed)."""
        with self._lock:
            now = self._clock()
            if self._loop_since is None or self._ran_healthy(now):
                return 0.0
            return now - self._loop_since

    def status(self) -> TaskStatus:
        down = self.down_for()
        with self._lock:
            return TaskStatus(
                running=self._up_since is not None, crashes=self._crashes,
                down_s=round(down, 1), last_error=self._last_error,
            )

    def _ran_healthy(self, now: float) -> bool:
        """The current run has lasted long enough to end the crash loop (caller holds lock)."""
        return self._up_since is not None and now - self._up_since >= self.policy.healthy_after_s


def run_supervised(body: Callable[[], None], stop: threading.Event, health: TaskHealth) -> None:
    """Run ``body`` in this thread until it returns or ``stop`` is set, restarting it after
    every unhandled exception with a capped exponential backoff."""
    policy = health.policy
    throttle = Throttle(log, CRASH_LOG_EVERY_S)
    delay = policy.initial_s
    while not stop.is_set():
        health.started()
        began = time.monotonic()
        try:
            body()
        except Exception as err:
            health.crashed(err)
            if time.monotonic() - began >= policy.healthy_after_s:
                delay = policy.initial_s  # it ran well for a while: this is a fresh fault
            throttle.log(
                logging.ERROR, "crash",
                "thread %s crashed (%d so far) and restarts in %.3g s: %r",
                health.name, health.status()["crashes"], delay, err, exc_info=True,
            )
            stop.wait(delay)
            delay = min(delay * 2.0, policy.max_s)
            continue
        break  # returned normally: finished
    health.stopped()


def start_supervised(
    name: str, body: Callable[[], None], stop: threading.Event, health: TaskHealth
) -> threading.Thread:
    """A started daemon thread running ``body`` under :func:`run_supervised`."""
    thread = threading.Thread(
        target=run_supervised, args=(body, stop, health), name=name, daemon=True
    )
    thread.start()
    return thread


def stalled(tasks: list[TaskHealth], limit_s: float) -> list[str]:
    """Names of the tasks that have been crash-looping for longer than ``limit_s``."""
    return [t.name for t in tasks if t.down_for() > limit_s]
