"""The ring of recent clean rows a swapped-in model is primed with."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.recent_rows import RecentRows


def _rows(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    ts = np.arange(a, b, dtype=np.float64)
    return ts, np.stack([ts * 10, ts * 100], axis=1)


def test_keeps_the_last_rows_in_time_order_across_the_wrap() -> None:
    ring = RecentRows(5, ["a", "b"])
    assert len(ring) == 0
    got = ring.latest()
    assert got is not None
    assert got[0].shape == (0,)
    assert got[1].shape == (0, 2)
    for a in range(0, 13, 3):  # pushes of 3 rows: the ring wraps mid-push
        ring.append(*_rows(a, a + 3))
        ts, rows = ring.latest()
        expect = np.arange(max(0, a + 3 - 5), a + 3, dtype=np.float64)
        assert ts.tolist() == expect.tolist()
        assert rows[:, 1].tolist() == (expect * 100).tolist()
    assert len(ring) == ring.capacity == 5


def test_a_push_larger_than_the_ring_keeps_its_tail() -> None:
    ring = RecentRows(4, ["a", "b"])
    ring.append(*_rows(0, 2))
    ring.append(*_rows(2, 12))
    ts, _ = ring.latest()
    assert ts.tolist() == [8.0, 9.0, 10.0, 11.0]
    ring.append(*_rows(12, 13))
    ts, _ = ring.latest(2)
    assert ts.tolist() == [11.0, 12.0]


def test_columns_by_name_and_resizing() -> None:
    ring = RecentRows(6, ["a", "b"])
    ring.append(*_rows(0, 6))
    ts, rows = ring.latest(3, ["b", "a"])
    assert ts.tolist() == [3.0, 4.0, 5.0]
    assert rows.tolist() == [[300.0, 30.0], [400.0, 40.0], [500.0, 50.0]]
    assert ring.latest(3, ["a", "c"]) is None  # a channel this ring never held
    small = ring.resized(2, ["b"])
    ts, rows = small.latest()
    assert (small.capacity, small.channels) == (2, ["b"])
    assert rows.tolist() == [[400.0], [500.0]]
    assert len(ring.resized(4, ["c"])) == 0
    ring.clear()
    assert len(ring) == 0
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        RecentRows(0, ["a"])
