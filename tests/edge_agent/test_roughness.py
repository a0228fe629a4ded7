"""A channel's noise level and its learned limit."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.data.headroom import HEADROOM, SHORT_HISTORY_ROWS, learned_limit
from edge_agent.data.roughness import (
    NOISE_STEPS,
    NoiseMeter,
    learned_noise_limits,
    median_of_8,
)


def test_level_is_the_median_step_and_ignores_steps_and_spikes() -> None:
    x = np.r_[np.zeros(10), np.full(10, 50.0)]  # a compressor loading: one large step
    x[15] = 90.0  # and a one-sample spike
    x = x + np.tile([0.0, 0.1], 10)  # steps of 0.1 otherwise
    level = NoiseMeter(1).push(x[:, None])[:, 0]
    assert np.isnan(level[: NOISE_STEPS]).all()  # the first reading has no step before it
    assert level[NOISE_STEPS:] == pytest.approx(0.1)


@pytest.mark.parametrize("seed", range(6))
def test_the_sorting_network_is_numpys_median_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (120, 4)) if seed % 2 else rng.integers(0, 3, (120, 4)) * 0.5
    x[rng.integers(0, 120, 3), rng.integers(0, 4, 3)] = np.nan
    want = np.median(np.lib.stride_tricks.sliding_window_view(x, NOISE_STEPS, axis=0), axis=-1)
    np.testing.assert_array_equal(median_of_8(x), want)  # NaN where np.median has NaN


def test_noise_lifts_the_level_in_proportion() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(0.0, 1.0, 4000)
    x[2000:] *= 4.0
    level = NoiseMeter(1).push(x[:, None])[:, 0]
    ratio = np.nanmedian(level[2100:]) / np.nanmedian(level[:1900])
    assert 3.5 < ratio < 4.5


@pytest.mark.parametrize("cuts", [[1], [3, 4, 5], list(range(2, 200, 9))])
def test_block_by_block_counts_as_the_whole(cuts: list[int]) -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(0.0, 1.0, (200, 3))
    x[50, 1] = np.nan
    whole = NoiseMeter(3).push(x)
    meter = NoiseMeter(3)
    np.testing.assert_array_equal(np.concatenate([meter.push(p) for p in np.split(x, cuts)]), whole)


def test_a_missing_reading_pauses_the_judgement() -> None:
    x = np.arange(40.0)
    x[20] = np.nan
    level = NoiseMeter(1).push(x[:, None])[:, 0]
    assert np.isnan(level[20 : 20 + NOISE_STEPS + 1]).all()
    assert level[20 + NOISE_STEPS + 1] == 1.0


def test_limit_headroom_shrinks_with_history_length() -> None:
    assert learned_limit(2.0, 100) == pytest.approx(2.0 * HEADROOM * 2)
    assert learned_limit(2.0, 10 * SHORT_HISTORY_ROWS) == pytest.approx(2.0 * HEADROOM * 1.1)
    assert learned_limit(0.0, 1000) is None  # a channel that never moved
    assert learned_limit(float("nan"), 1000) is None


def test_learned_limits_ignore_masked_rows() -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(0.0, 1.0, (5000, 1))
    noisy = x.copy()
    noisy[1000:1100] *= 10.0  # a labelled noise burst in the history
    masked = noisy.copy()
    masked[1000:1100] = np.nan
    (plain,) = learned_noise_limits(x)
    (with_burst,) = learned_noise_limits(noisy)
    (without,) = learned_noise_limits(masked)
    assert with_burst is not None
    assert plain is not None
    assert without is not None
    assert with_burst > 5 * plain
    assert without < 1.2 * plain
