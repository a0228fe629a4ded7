"""Runs of identical readings and the learned stuck limit."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.data.repeats import (
    STUCK_MIN_SAMPLES,
    STUCK_RUN_FACTOR,
    RepeatCounter,
    learned_stuck_limits,
    longest_runs,
    stuck_limit,
)

NAN = np.nan


def test_run_lengths_restart_on_change_and_on_nan() -> None:
    x = np.array([[1.0], [1.0], [2.0], [2.0], [2.0], [NAN], [NAN], [2.0]])
    runs = RepeatCounter(1).push(x)[:, 0]
    assert runs.tolist() == [1, 2, 1, 2, 3, 1, 1, 1]


@pytest.mark.parametrize("cuts", [[1], [3, 4], [2, 5, 6, 30], list(range(1, 40))])
def test_block_by_block_counts_as_the_whole(cuts: list[int]) -> None:
    rng = np.random.default_rng(1)
    x = np.round(rng.normal(0.0, 0.6, (40, 3)), 0)
    x[10:25, 1] = 7.0
    whole = RepeatCounter(3).push(x)
    counter = RepeatCounter(3)
    parts = [counter.push(part) for part in np.split(x, cuts)]
    assert np.array_equal(np.concatenate(parts), whole)


def test_limit_rule_floor_factor_and_unjudgeable() -> None:
    assert stuck_limit(1, 10_000) == STUCK_MIN_SAMPLES
    assert stuck_limit(40, 10_000) == STUCK_RUN_FACTOR * 40
    assert stuck_limit(3_000, 10_000) is None  # holds still for 30 % of the history
    assert stuck_limit(1, 0) is None


def test_learned_limits_ignore_masked_rows() -> None:
    """Labelled rows (set to NaN by the trainer) do not teach a long normal run."""
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 1.0, (1_000, 2))
    x[200:320, 0] = x[199, 0]  # a labelled stuck fault in the history
    assert longest_runs(x).tolist() == [121, 1]
    masked = x.copy()
    masked[200:320] = NAN
    assert learned_stuck_limits(masked) == [STUCK_MIN_SAMPLES, STUCK_MIN_SAMPLES]
    assert learned_stuck_limits(x) == [STUCK_RUN_FACTOR * 121, STUCK_MIN_SAMPLES]

