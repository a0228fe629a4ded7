"""A local round's training in a child process: the same weights as in the agent's own
process, errors carried back, and a child that is stopped or dies never leaves the learner
hanging or a process behind.

Real child processes (``spawn``), a small dense autoencoder made here.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import numpy as np
import pytest

from edge_agent.learn.isolated import (
    LOWEST_PRIORITY,
    RoundInterrupted,
    lower_priority,
    peak_rss_mib,
    train_in_child,
)
from edge_agent.learn.local import LocalTrainingConfig, train_dense
from edge_agent.learn.weights import WeightSet

STEPS, CHANNELS, HIDDEN = 4, 2, 3
ACTIVATIONS = ["relu", "linear"]
# Long enough that the child is still training when the test acts on it.
ENDLESS = LocalTrainingConfig(epochs=1_000_000, batch_size=1, max_cpu_s=600.0)
ACT_AFTER_S = 1.0
GONE_WITHIN_S = 10.0


def small_model(seed: int = 0) -> WeightSet:
    rng = np.random.default_rng(seed)
    n = STEPS * CHANNELS
    arrays = [rng.normal(0, 0.3, (n, HIDDEN)), np.zeros(HIDDEN), rng.normal(0, 0.3, (HIDDEN, n)),
              np.zeros(n)]  # fmt: skip
    return WeightSet(("enc/kernel", "enc/bias", "dec/kernel", "dec/bias"), tuple(arrays))


def windows(count: int = 200, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (count, STEPS, CHANNELS)).astype(np.float32)


def no_children_within(seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while mp.active_children():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_child_trains_exactly_what_this_process_would() -> None:
    cfg = LocalTrainingConfig(epochs=3, batch_size=16, seed=5)
    here = train_dense(small_model(), windows(), cfg, ACTIVATIONS)
    there = train_in_child(small_model(), windows(), cfg, ACTIVATIONS)
    assert there.steps == here.steps == 3 * -(-200 // 16)
    assert there.loss_last == here.loss_last
    for a, b in zip(there.weights.arrays, here.weights.arrays, strict=True):
        np.testing.assert_array_equal(a, b)
    assert there.cpu_s > 0
    assert here.peak_rss_mib is None  # trained in this process: not measured apart
    assert there.peak_rss_mib is not None
    assert 0 < there.peak_rss_mib < peak_rss_mib()  # the child's, not this test process's
    assert no_children_within(GONE_WITHIN_S)


def test_a_training_error_comes_back_with_its_message() -> None:
    wrong = windows()[:, :, :1]  # one channel where the model takes two
    with pytest.raises(ValueError, match=r"expected normalized windows .* got shape \(200, 4, 1\)"):
        train_in_child(small_model(), wrong, LocalTrainingConfig(), ACTIVATIONS)
    assert no_children_within(GONE_WITHIN_S)


def test_stopping_ends_the_child_and_the_wait() -> None:
    stop = threading.Event()
    threading.Timer(ACT_AFTER_S, stop.set).start()
    began = time.monotonic()
    with pytest.raises(RoundInterrupted):
        train_in_child(small_model(), windows(), ENDLESS, ACTIVATIONS, stop=stop)
    assert time.monotonic() - began < ACT_AFTER_S + GONE_WITHIN_S
    assert no_children_within(GONE_WITHIN_S)


def test_a_child_killed_mid_round_is_a_failed_round_not_a_hang() -> None:
    def kill_the_child() -> None:
        for child in mp.active_children():
            assert child.pid is not None
            os.kill(child.pid, signal.SIGKILL)

    threading.Timer(ACT_AFTER_S, kill_the_child).start()
    with pytest.raises(ValueError, match=r"ended without a result \(exit code -9\)"):
        train_in_child(small_model(), windows(), ENDLESS, ACTIVATIONS)
    assert no_children_within(GONE_WITHIN_S)


def test_the_child_lowers_its_own_priority_only() -> None:
    seen: list[int] = []

    def body() -> None:
        lower_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [LOWEST_PRIORITY]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != LOWEST_PRIORITY
