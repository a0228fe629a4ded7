"""A local round's training in a child process at the lowest CPU priority.

Pipeline position: fleet learning, between ``edge_agent.learn.train_round`` (which makes the
delta) and ``edge_agent.learn.local`` (the training itself). The agent's learner thread hands
the round's start weights and windows to a fresh interpreter (``spawn``) at nice 19 and waits.

Why a process and not the learner's own thread at nice 19: every Python thread of the agent
shares one interpreter lock. A nice-19 thread that holds it when the scheduler sets it aside
for busier work keeps the main loop and the polling threads waiting until it runs again, which
on a loaded gateway took seconds (two status heartbeats a second apart counted the same rows).
A process has a lock of its own; its low priority costs only itself. The price is the child's
start (an interpreter, numpy and pydantic, no numba: a fraction of a second on the desk) and
its memory while the round runs.

The child gets plain data (weights, windows, settings, activation names) and returns the
:class:`~edge_agent.learn.local.LocalResult`, with its own peak memory, or the error's text.
A shutdown while it trains ends it (:class:`RoundInterrupted`); a child that dies without a
result (killed, out of memory) is a failed round, never a hung learner.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.learn.local import LocalResult, LocalTrainingConfig, train_dense
from edge_agent.learn.weights import WeightSet

log = logging.getLogger("edge_agent.learn")

LOWEST_PRIORITY = 19  # nice value of the training process
POLL_S = 0.2  # how often the waiting thread looks at the stop flag
STOP_WAIT_S = 5.0  # after a terminate, how long before the child is killed
CHILD_NAME = "edge-learner-round"
KIB = 1024


class RoundInterrupted(Exception):
    """The agent is stopping: the round's training was ended before it finished."""


def lower_priority() -> bool:
    """Give the calling thread the lowest CPU priority (Linux: nice is per thread; in the
    child, the main thread is where the training runs)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
    except (OSError, AttributeError) as err:
        log.warning("cannot lower the training process's priority: %s", err)
        return False
    return True


def peak_rss_mib() -> float | None:
    """This process's peak resident memory (Linux ``VmHWM``), MiB; None where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / KIB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _child(
    out: Connection,
    weights: WeightSet,
    windows: npt.NDArray[np.float32],
    cfg: LocalTrainingConfig,
    activations: list[str],
) -> None:  # pragma: no cover - runs in the child; its effects are tested from the parent
    lower_priority()
    try:
        trained = train_dense(weights, windows, cfg, activations)
        result: tuple[str, object] = ("ok", replace(trained, peak_rss_mib=peak_rss_mib()))
    except ValueError as err:  # bad windows or diverged: the round fails with this text
        result = ("error", str(err))
    out.send(result)
    out.close()


def train_in_child(
    global_weights: WeightSet,
    windows: npt.ArrayLike,
    cfg: LocalTrainingConfig,
    activations: Sequence[str],
    *,
    stop: threading.Event | None = None,
) -> LocalResult:
    """:func:`~edge_agent.learn.local.train_dense` in a nice-19 child process; waits for it.

    ``ValueError`` with the child's message when training fails, or when the child ends
    without a result; :class:`RoundInterrupted` when ``stop`` is set first (the child is
    ended)."""
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_child,
        args=(send, global_weights, np.asarray(windows, np.float32), cfg, list(activations)),
        name=CHILD_NAME,
        daemon=True,
    )
    child.start()
    send.close()  # the child holds the only writing end: its death closes the pipe
    answered = False
    try:
        while not receive.poll(POLL_S):
            if stop is not None and stop.is_set():
                raise RoundInterrupted("the agent is stopping")
            if not child.is_alive() and not receive.poll(0):
                raise _no_result(child)
        try:
            kind, value = receive.recv()
        except EOFError:  # the pipe closed: the child died before it could answer
            raise _no_result(child) from None
        answered = True
    finally:
        _end(child, answered)
        receive.close()
    if kind != "ok":
        raise ValueError(str(value))
    assert isinstance(value, LocalResult)
    return value


def _no_result(child: mp.process.BaseProcess) -> ValueError:
    child.join(STOP_WAIT_S)  # its exit code, once it is reaped
    return ValueError(f"the training process ended without a result (exit code {child.exitcode})")


def _end(child: mp.process.BaseProcess, answered: bool) -> None:
    """Reap the child: one that answered is let exit, any other is ended."""
    child.join(STOP_WAIT_S if answered else 0)
    if child.is_alive():
        child.terminate()
        child.join(STOP_WAIT_S)
    if child.is_alive():  # pragma: no cover - a child that ignores SIGTERM
        child.kill()
        child.join()
