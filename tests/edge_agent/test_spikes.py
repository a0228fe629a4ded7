"""Spikes: a reading that left the one before and came back at the next, further than normal."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.data.headroom import HEADROOM, SHORT_HISTORY_ROWS
from edge_agent.data.jumps import MIN_HISTORY_ROWS
from edge_agent.data.spikes import SpikeDetector, learned_spike_limits

NAN = float("nan")


def one_by_one(x: np.ndarray, limit: float) -> np.ndarray:
    """The rule as the module states it, with the whole series at hand: the specification."""
    out = np.zeros(x.size, bool)
    for t in range(1, x.size - 1):
        into, out_of = x[t] - x[t - 1], x[t + 1] - x[t]
        out[t] = bool(into * out_of < 0 and min(abs(into), abs(out_of)) > limit)
    return out


def pushed(det: SpikeDetector, parts: list[np.ndarray]) -> np.ndarray:
    """Each push's answer, the late one set on the previous push's last row."""
    rows: list[np.ndarray] = []
    for part in parts:
        now, late = det.push(part)
        if rows and rows[-1].size:
            rows[-1][-1] |= late
        rows.append(now)
    return np.concatenate(rows)


def test_a_glitch_is_a_spike_and_a_load_step_is_not() -> None:
    x = np.r_[np.full(5, 90.0), 130.0, np.full(5, 90.0), np.full(5, 0.0), 1.0, 0.0]
    now, late = SpikeDetector([6.0]).push(x[:, None])
    assert np.flatnonzero(now[:, 0]).tolist() == [5]  # not the stop at row 11, not row 16
    assert not late.any()


def test_the_last_reading_is_judged_by_the_next_push() -> None:
    det = SpikeDetector([6.0, 6.0])
    now, late = det.push(np.array([[90.0, 1.0], [130.0, 1.0]]))
    assert not now.any()  # row 1 may yet be a spike
    assert not late.any()
    now, late = det.push(np.array([[90.0, 1.0]]))
    assert late.tolist() == [True, False]
    assert not now.any()


def test_a_missing_reading_next_to_it_leaves_a_reading_unjudged() -> None:
    x = np.array([0.0, 50.0, NAN, 0.0, 50.0, 0.0, np.inf, 0.0])
    now, _ = SpikeDetector([6.0]).push(x[:, None])
    assert np.flatnonzero(now[:, 0]).tolist() == [4]


@pytest.mark.parametrize("cuts", [[], [1], list(range(1, 300)), list(range(5, 300, 23))])
def test_pushes_match_the_rule_with_the_whole_series_at_hand(cuts: list[int]) -> None:
    rng = np.random.default_rng(21)
    x = rng.normal(0.0, 1.0, (300, 2))
    for c in range(2):
        at = rng.choice(np.arange(1, 299), 30, replace=False)
        x[at, c] += rng.choice([-1.0, 1.0], 30) * rng.uniform(4.0, 12.0, 30)
    x[100:140, 1] += 25.0  # a level shift: its two steps are no spikes
    got = pushed(SpikeDetector([6.0, 6.0]), np.split(x, cuts))
    for c in range(2):
        np.testing.assert_array_equal(got[:, c], one_by_one(x[:, c], 6.0))
    assert got.any()


def test_learned_limit_is_the_largest_normal_excursion_with_headroom() -> None:
    rows = 2 * MIN_HISTORY_ROWS
    x = np.tile([0.0, 1.0], rows // 2)  # every reading is an excursion of 1
    x[600] = 40.0  # a load step up...
    x[601:] += 40.0  # ...that stays: its steps are no excursion
    headroom = HEADROOM * (1 + SHORT_HISTORY_ROWS / rows)
    (limit,) = learned_spike_limits(x[:, None])
    assert limit == pytest.approx(1.0 * headroom)
    x[900] += 30.0  # a glitch in the history: 29 from both its neighbours...
    assert learned_spike_limits(x[:, None])[0] == pytest.approx(29.0 * headroom)
    x[900] = NAN  # ...labelled: it does not count
    assert learned_spike_limits(x[:, None])[0] == pytest.approx(
        HEADROOM * (1 + SHORT_HISTORY_ROWS / (rows - 1))
    )


def test_no_limit_from_a_short_history() -> None:
    x = np.random.default_rng(3).normal(0.0, 1.0, (MIN_HISTORY_ROWS - 1, 2))
    assert learned_spike_limits(x) == [None, None]
