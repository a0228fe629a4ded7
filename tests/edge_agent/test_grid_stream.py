"""The stateful grid aligner: any split of the rows into pushes gives the one-shot grid."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.data.grid import Grid, GridAligner, GridChunk, align_push, align_to_grid

PERIOD_S = 1.0
MAX_HOLD = 5
FILL = np.array([10.0, 20.0])


def _messy_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Jitter, duplicates, held gaps, long gaps (segment restarts) and NaNs."""
    rng = np.random.default_rng(seed)
    step = rng.choice(
        [0.0, 0.2, 1.0, 2.0, 4.0, 30.0], size=n, p=[0.04, 0.03, 0.8, 0.06, 0.04, 0.03]
    )
    ts = 1_700_000_000.0 + np.cumsum(step + rng.normal(0.0, 0.05, n) * (step > 0))
    vals = rng.normal(size=(n, 2))
    vals[rng.random((n, 2)) < 0.05] = np.nan
    vals[:3, 0] = np.nan  # before any valid value: the fill
    return ts, vals


def _push_all(al: GridAligner, ts: np.ndarray, vals: np.ndarray, cuts: list[int]) -> Grid:
    chunks: list[GridChunk] = []
    for a, b in zip([0, *cuts], [*cuts, len(ts)], strict=True):
        ch = al.push(ts[a:b], vals[a:b])
        assert ch.first_index == sum(c.times.size for c in chunks)
        chunks.append(ch)
    return Grid(
        np.concatenate([c.times for c in chunks]),
        np.concatenate([c.values for c in chunks]),
        np.concatenate([c.imputed for c in chunks]),
        np.concatenate([c.segment_start for c in chunks]),
        np.concatenate([c.row_to_grid for c in chunks]),
    )


def _assert_same(a: Grid, b: Grid) -> None:
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.imputed, b.imputed)
    np.testing.assert_array_equal(a.segment_start, b.segment_start)
    np.testing.assert_array_equal(a.row_to_grid, b.row_to_grid)


@pytest.mark.parametrize("split", ["one_row", "random", "whole"])
def test_pushes_equal_the_one_shot_grid(split: str) -> None:
    ts, vals = _messy_rows(3000, seed=4)
    ref = align_to_grid(ts, vals, period_s=PERIOD_S, max_hold=MAX_HOLD, fill=FILL)
    # The messy stream exercises every rule.
    assert np.unique(ref.segment_start).size > 20
    assert ref.imputed.any()
    assert (np.diff(ref.row_to_grid) == 0).any()
    rng = np.random.default_rng(1)
    cuts = {
        "one_row": list(range(1, len(ts))),
        "random": sorted(rng.choice(np.arange(1, len(ts)), size=300, replace=False).tolist()),
        "whole": [],
    }[split]
    al = GridAligner(PERIOD_S, MAX_HOLD, FILL)
    _assert_same(_push_all(al, ts, vals, cuts), ref)
    # The carried state ends where the one-shot grid ends.
    assert al.next_index == ref.times.size
    assert al.segment_start == ref.segment_start[-1]
    assert al.last_t[0] == ref.times[-1]


def test_state_carries_holds_gaps_and_duplicates_across_pushes() -> None:
    al = GridAligner(PERIOD_S, 2, np.array([0.5]))
    a = al.push(np.array([0.0, 1.0]), np.array([[np.nan], [2.0]]))
    assert a.values[:, 0].tolist() == [0.5, 2.0]
    assert a.new_segment.tolist() == [True, False]
    # A duplicate of the previous push's last point maps to it, adds nothing.
    b = al.push(np.array([1.3]), np.array([[99.0]]))
    assert b.times.size == 0
    assert b.row_to_grid.tolist() == [1]
    assert b.first_index == 2
    # A NaN after the push boundary holds the value from the earlier push; a 2-point gap is held.
    c = al.push(np.array([2.0, 5.0]), np.array([[np.nan], [6.0]]))
    assert c.times.tolist() == [2.0, 3.0, 4.0, 5.0]
    assert c.values[:, 0].tolist() == [2.0, 2.0, 2.0, 6.0]
    assert c.imputed[:, 0].tolist() == [True, True, True, False]
    assert c.row_to_grid.tolist() == [2, 5]
    assert not c.new_segment.any()
    # A gap longer than max_hold restarts: new segment, held value back to the fill.
    d = al.push(np.array([9.0, 10.0]), np.array([[7.0], [np.nan]]))
    assert d.segment_start.tolist() == [6, 6]
    assert d.new_segment.tolist() == [True, False]
    assert d.values[:, 0].tolist() == [7.0, 7.0]
    e = al.push(np.array([20.0]), np.array([[np.nan]]))
    assert e.values[:, 0].tolist() == [0.5]
    assert al.segment_start == 8


def test_empty_push_changes_nothing() -> None:
    al = GridAligner(PERIOD_S, MAX_HOLD, FILL)
    assert al.segment_start == -1
    empty = al.push(np.zeros(0), np.zeros((0, 2)))
    assert empty.times.size == 0
    assert empty.first_index == 0
    assert al.next_index == 0
    al.push(np.array([5.0]), np.array([[1.0, 2.0]]))
    state = (al.last_t.copy(), al.held.copy(), al.state.copy())
    al.push(np.zeros(0), np.zeros((0, 2)))
    np.testing.assert_array_equal(al.last_t, state[0])
    np.testing.assert_array_equal(al.held, state[1])
    np.testing.assert_array_equal(al.state, state[2])


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="period"):
        GridAligner(0.0, 1, FILL)
    with pytest.raises(ValueError, match="max_hold"):
        GridAligner(1.0, -1, FILL)
    al = GridAligner(1.0, 1, FILL)
    with pytest.raises(ValueError, match="shape"):
        al.push(np.zeros(2), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="no rows"):
        align_to_grid(np.zeros(0), np.zeros((0, 2)), period_s=1.0, max_hold=1, fill=FILL)


def test_the_kernel_stops_before_exceeding_max_points() -> None:
    al = GridAligner(PERIOD_S, MAX_HOLD, FILL)
    ts = np.array([0.0, 1.0, 4.0, 5.0, 6.0])  # points added per row: 1, 1, 3, 1, 1
    vals = np.ones((5, 2))
    args = (FILL, PERIOD_S, MAX_HOLD, al.last_t, al.held, al.state)
    times, *_, rows = align_push(ts, vals, *args, 4)
    assert rows.size == 2  # the third row would make 5 points
    assert times.tolist() == [0.0, 1.0]
    times, *_, rows = align_push(ts[2:], vals[2:], *args, 1)
    assert rows.tolist() == [4]  # the first row is always taken, even past the cap
    assert times.tolist() == [2.0, 3.0, 4.0]
    assert al.next_index == 5
