"""Grid alignment: duplicates, held gaps, segment restarts, NaN holds, and causality."""

from __future__ import annotations

import numpy as np

from edge_agent.data.grid import align_to_grid, interpolate_held_runs


def test_rules_on_a_hand_made_series() -> None:
    ts = np.array([0.0, 1.0, 1.2, 3.0, 4.0, 40.0, 41.0])
    vals = np.array([[1.0], [2.0], [9.0], [4.0], [np.nan], [7.0], [8.0]])
    g = align_to_grid(ts, vals, period_s=1.0, max_hold=5, fill=np.array([0.5]))
    # 1.2 s is a duplicate of the 1 s point; 2 s is held; 40 s opens a new segment.
    assert g.times.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 40.0, 41.0]
    assert g.values[:, 0].tolist() == [1.0, 2.0, 2.0, 4.0, 4.0, 7.0, 8.0]
    assert g.imputed[:, 0].tolist() == [False, False, True, False, True, False, False]
    assert g.segment_start.tolist() == [0, 0, 0, 0, 0, 5, 5]
    assert g.row_to_grid.tolist() == [0, 1, 1, 3, 4, 5, 6]


def test_nan_before_any_value_uses_the_fill() -> None:
    g = align_to_grid(
        np.array([0.0, 1.0]),
        np.array([[np.nan], [3.0]]),
        period_s=1.0,
        max_hold=2,
        fill=np.array([10.0]),
    )
    assert g.values[:, 0].tolist() == [10.0, 3.0]
    assert g.imputed[:, 0].tolist() == [True, False]


def test_alignment_is_causal() -> None:
    rng = np.random.default_rng(0)
    ts = np.cumsum(
        rng.choice([0.0, 1.0, 2.0, 3.0, 50.0], size=500, p=[0.05, 0.7, 0.15, 0.08, 0.02])
    )
    vals = rng.normal(size=(500, 3))
    vals[rng.random((500, 3)) < 0.05] = np.nan
    full = align_to_grid(ts, vals, period_s=1.0, max_hold=10, fill=np.zeros(3))
    part = align_to_grid(ts[:321], vals[:321], period_s=1.0, max_hold=10, fill=np.zeros(3))
    m = part.times.size
    np.testing.assert_array_equal(full.values[:m], part.values)
    np.testing.assert_array_equal(full.imputed[:m], part.imputed)
    np.testing.assert_array_equal(full.row_to_grid[:321], part.row_to_grid)


def test_trainer_interpolates_only_long_held_runs() -> None:
    ts = np.array([0.0, 1.0, 5.0, 6.0, 8.0])
    vals = np.array([[0.0], [1.0], [5.0], [6.0], [8.0]])
    g = align_to_grid(ts, vals, period_s=1.0, max_hold=10, fill=np.zeros(1))
    gi = interpolate_held_runs(g, max_ffill=2)
    # The 3-point gap (2, 3, 4 s) is interpolated; the 1-point gap at 7 s stays held.
    assert gi.values[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 6.0, 8.0]
    np.testing.assert_array_equal(gi.imputed, g.imputed)
