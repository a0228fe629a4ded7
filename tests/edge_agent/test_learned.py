"""The learned data-quality checks applied offline (replay, evaluate, benchmarks)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.data.learned import CHUNK_ROWS, LearnedChecks, LearnedLimits


def checks(
    stuck: list[int | None],
    noisy: list[float | None],
    jump: list[float | None] | None = None,
    spike: list[float | None] | None = None,
) -> LearnedChecks:
    none = (None,) * len(stuck)
    jumps = tuple(jump) if jump is not None else none
    spikes = tuple(spike) if spike is not None else none
    return LearnedChecks(LearnedLimits(tuple(stuck), tuple(noisy), jumps, spikes))


def test_stuck_readings_become_missing_and_mark_their_rows() -> None:
    x = np.column_stack([np.r_[np.arange(5.0), np.full(15, 9.0)], np.arange(20.0)])
    clean, rows = checks([10, None], [None, None]).apply(x)
    assert rows.tolist() == [False] * 14 + [True] * 6  # 9.0 from row 5: the 10th is row 14
    assert np.isnan(clean[14:, 0]).all()
    assert not np.isnan(clean[:14, 0]).any()
    assert np.array_equal(clean[:, 1], x[:, 1])


def test_noisy_readings_are_kept_and_mark_their_rows() -> None:
    rng = np.random.default_rng(5)
    x = np.column_stack([rng.normal(0.0, 1.0, 300), np.arange(300.0)])
    x[100:150, 0] *= 6.0
    clean, rows = checks([None, None], [2.5, None]).apply(x)
    assert clean is x
    assert rows[110:150].mean() > 0.8
    assert not rows[:100].any()
    assert not rows[160:].any()


def test_jumps_are_kept_and_mark_their_rows() -> None:
    x = np.column_stack([np.r_[np.zeros(10), 50.0, np.zeros(10)], np.arange(21.0)])
    clean, rows = checks([None, None], [None, None], [5.0, None]).apply(x)
    assert clean is x
    assert np.flatnonzero(rows).tolist() == [10]  # the spike; not its way back


def test_limits_learned_from_a_history_ignore_masked_rows() -> None:
    rng = np.random.default_rng(8)
    x = np.column_stack([rng.normal(0.0, 1.0, 2000), np.ones(2000)])
    x[700, 0] = 80.0
    limits = LearnedLimits.learn(np.where(np.arange(2000)[:, None] == 700, np.nan, x))
    assert limits.jump_above[0] is not None
    assert limits.jump_above[0] < 20.0
    assert limits.jump_above[1] is None  # never moved
    assert limits.noisy_above[1] is None
    assert LearnedLimits.learn(x).jump_above[0] > 80.0  # the spike, learned as normal
    assert LearnedLimits.none(3) == LearnedLimits(*((None,) * 3,) * 4)


def test_a_spike_on_a_blocks_last_row_is_told_by_the_next_call() -> None:
    rows = CHUNK_ROWS + 31
    x = np.column_stack([np.r_[np.zeros(10), 50.0, np.zeros(rows - 11)], np.zeros(rows)])
    x[CHUNK_ROWS - 1, 0] = -50.0  # on the checks' own slice boundary
    streamed = checks([None, None], [None, None], spike=[5.0, None])
    _, first = streamed.apply(x[:11])
    assert not first.any()  # row 10's way back is in the next block
    assert not streamed.late
    _, second = streamed.apply(x[11:])
    assert streamed.late  # row 10 was a spike
    assert np.flatnonzero(second).tolist() == [CHUNK_ROWS - 12]  # the one on the boundary
    _, whole = checks([None, None], [None, None], spike=[5.0, None]).apply(x)
    assert np.flatnonzero(whole).tolist() == [10, CHUNK_ROWS - 1]


def test_without_limits_nothing_is_touched() -> None:
    x = np.ones((2 * CHUNK_ROWS + 30, 2))
    clean, rows = checks([None, None], [None, None]).apply(x)
    assert clean is x
    assert not rows.any()


@pytest.mark.parametrize("cuts", [[1], [7, 8, 9], list(range(3, 300, 17)), [9000]])
def test_block_by_block_gives_the_whole_files_answer(cuts: list[int]) -> None:
    """Also across the checks' own slicing of long blocks (CHUNK_ROWS)."""
    rng = np.random.default_rng(6)
    x = np.round(rng.normal(0.0, 1.0, (3 * CHUNK_ROWS + 300, 2)), 1)
    x[40:80, 0] = 3.0
    x[CHUNK_ROWS - 20 : CHUNK_ROWS + 20, 0] = 2.0  # stuck across a slice boundary
    x[200:240, 1] *= 8.0
    x[CHUNK_ROWS + 100, 1] = 40.0  # a spike
    x[CHUNK_ROWS * 2 - 1 : CHUNK_ROWS * 2 + 1, 0] = [-30.0, 30.0]  # two across a boundary
    whole = checks([12, 12], [2.0, 2.0], [9.0, 9.0]).apply(x)
    assert whole[1][[CHUNK_ROWS + 100, CHUNK_ROWS * 2 - 1, CHUNK_ROWS * 2]].all()
    streamed = checks([12, 12], [2.0, 2.0], [9.0, 9.0])
    parts = [streamed.apply(part) for part in np.split(x, cuts)]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole[0])
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole[1])


def test_one_limit_per_channel() -> None:
    with pytest.raises(ValueError, match="2 stuck, 1 noisy, 2 jump, 2 spike"):
        LearnedLimits((1, 2), (None,), (None, None), (None, None))
