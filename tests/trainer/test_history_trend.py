"""``trainer.history_trend``: drift and spread that outliers, gaps and cycles do not fool."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.history_trend import MIN_TREND_SAMPLES, robust_trend

ROWS = 20_000
EPOCH_S = 1_767_225_600.0  # absolute times, as read from a file


def test_a_ramp_with_spikes_and_gaps_keeps_its_slope_and_noise() -> None:
    rng = np.random.default_rng(0)
    t = EPOCH_S + np.arange(ROWS, dtype=np.float64)
    x = 27.0 + 2.0 * np.arange(ROWS) / ROWS + rng.normal(0.0, 0.05, ROWS)
    spikes = rng.choice(ROWS, ROWS // 10, replace=False)
    x[spikes] += rng.choice([-50.0, 50.0], spikes.size)  # a tenth of the samples wild
    x[5_000:6_000] = np.nan  # a gap
    trend = robust_trend(t, x)
    assert trend is not None
    assert trend.drift == pytest.approx(2.0, rel=0.02)
    assert trend.spread == pytest.approx(0.05, rel=0.2)
    assert trend.ratio > 30


def test_whole_cycles_are_not_a_drift() -> None:
    t = np.arange(ROWS, dtype=np.float64)
    x = 70.0 + 8.0 * np.sin(2 * np.pi * 3 * t / ROWS)  # three daily swings
    trend = robust_trend(t, x)
    assert trend is not None
    assert trend.ratio < 1.0  # the line through whole sine cycles still tilts a little


def test_a_flat_channel_gives_a_finite_ratio() -> None:
    t = np.arange(100, dtype=np.float64)
    trend = robust_trend(t, np.full(100, 0.25))
    assert trend is not None
    assert trend.drift == 0.0
    assert trend.ratio == 0.0
    steps = robust_trend(t, 0.01 * t)  # a noise-free ramp: spread 0
    assert steps is not None
    assert np.isfinite(steps.ratio)
    assert steps.ratio > 1e6


def test_too_little_to_say_anything() -> None:
    few = MIN_TREND_SAMPLES - 1
    assert robust_trend(np.arange(few, dtype=np.float64), np.ones(few)) is None
    same_instant = np.zeros(MIN_TREND_SAMPLES * 2)
    assert robust_trend(same_instant, np.arange(same_instant.size, dtype=np.float64)) is None
