"""Jumps: readings further from the one before than the channel ever moved in one step."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.data.headroom import HEADROOM, SHORT_HISTORY_ROWS
from edge_agent.data.jumps import MIN_HISTORY_ROWS, JumpDetector, learned_jump_limits

NAN = float("nan")


def one_by_one(x: np.ndarray, limit: float) -> np.ndarray:
    """The rule as the module states it, one reading at a time: the specification."""
    out = np.zeros(x.size, bool)
    prev = ref = NAN
    for t, v in enumerate(x):
        if not np.isfinite(v):
            ref = NAN
        elif not np.isfinite(prev):
            ref = v
        elif abs(v - prev) > limit and abs(v - ref) > limit:
            out[t] = True
        else:
            ref = v
        prev = v
    return out


def test_a_spike_is_flagged_and_its_way_back_is_not() -> None:
    x = np.r_[np.zeros(5), 9.0, np.zeros(5), 9.0, -9.0, 9.0, np.zeros(3)]
    got = JumpDetector([2.0]).push(x[:, None])[:, 0]
    assert np.flatnonzero(got).tolist() == [5, 11, 12, 13]


def test_a_step_to_a_new_level_is_flagged_once() -> None:
    x = np.r_[np.zeros(5), np.full(5, 9.0), np.zeros(5)]
    got = JumpDetector([2.0]).push(x[:, None])[:, 0]
    assert np.flatnonzero(got).tolist() == [5, 10]  # the step up, and the step back


def test_no_judgement_across_a_missing_reading() -> None:
    x = np.array([0.0, 0.0, NAN, 9.0, 9.0, 0.0, 0.0])
    got = JumpDetector([2.0]).push(x[:, None])[:, 0]
    assert np.flatnonzero(got).tolist() == [5]


def test_channels_are_judged_by_their_own_limit() -> None:
    x = np.column_stack([np.r_[0.0, 5.0, 0.0], np.r_[0.0, 5.0, 0.0], np.r_[0.0, 5.0, 0.0]])
    got = JumpDetector([2.0, 6.0, np.inf]).push(x)
    assert got.tolist() == [[False] * 3, [True, False, False], [False] * 3]


@pytest.mark.parametrize("cuts", [[], [1], list(range(1, 400)), list(range(5, 400, 37))])
def test_vectorized_pushes_match_the_rule_one_reading_at_a_time(cuts: list[int]) -> None:
    rng = np.random.default_rng(12)
    x = rng.normal(0.0, 1.0, (400, 3))
    for c in range(3):
        at = rng.choice(400, 40, replace=False)
        x[at, c] += rng.choice([-1.0, 1.0], 40) * rng.uniform(4.0, 12.0, 40)
        x[rng.choice(400, 10, replace=False), c] = NAN
    x[100:130, 1] += 20.0  # a level shift
    x[200:203, 2] = [30.0, -30.0, 30.0]  # a burst of spikes
    det = JumpDetector([5.0, 5.0, 5.0])
    got = np.concatenate([det.push(part) for part in np.split(x, cuts)])
    for c in range(3):
        np.testing.assert_array_equal(got[:, c], one_by_one(x[:, c], 5.0))
    assert got[:, 2][200:203].all()


def test_learned_limit_is_the_largest_normal_step_with_headroom() -> None:
    rows = 2 * MIN_HISTORY_ROWS
    ramp = np.tile([0.0, 1.0, 3.0, 2.0], rows // 4)  # steps of 1, 2, 1 and 2
    x = np.column_stack([ramp, np.full(rows, 7.0)])
    limit, still = learned_jump_limits(x)
    assert limit == pytest.approx(2.0 * HEADROOM * (1 + SHORT_HISTORY_ROWS / rows))
    assert still is None  # a channel that never moved
    toggling = np.tile([0.0, 1.0], rows // 2)
    toggling[500] = 9.0  # a fault, 8 from its neighbours...
    assert learned_jump_limits(toggling[:, None])[0] == pytest.approx(8.0 * HEADROOM * 1.5)
    toggling[500] = NAN  # ...labelled: its steps (and its row) do not count
    headroom = HEADROOM * (1 + SHORT_HISTORY_ROWS / (rows - 1))
    assert learned_jump_limits(toggling[:, None])[0] == pytest.approx(1.0 * headroom)


def test_no_limit_from_a_history_too_short_to_show_the_machines_moves() -> None:
    x = np.random.default_rng(2).normal(0.0, 1.0, (MIN_HISTORY_ROWS - 1, 2))
    assert learned_jump_limits(x) == [None, None]
    assert None not in learned_jump_limits(np.r_[x, x])
