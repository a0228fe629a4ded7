"""trainer.calibrate: the alert threshold (POT fit, percentile, margin) and the screen threshold,
and the tail probabilities the gateway reads from them."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.detect.forest import OUTSIDE_LIMITS
from trainer.calibrate import (
    POT_TAIL_WINDOWS,
    calibrate_threshold,
    screen_threshold,
    tail_error_ratio,
)
from trainer.config import ThresholdConfig


def test_pot_tail_matches_the_exponential_it_was_fitted_on() -> None:
    rng = np.random.default_rng(0)
    errors = rng.exponential(1.0, size=20_000)
    model = calibrate_threshold(errors, ThresholdConfig(method="pot", risk=1e-3, margin=1.0))
    assert model.method == "pot"
    # For Exp(1), P(E >= e) = exp(-e); the threshold for risk 1e-3 is ln(1000) = 6.9.
    assert abs(model.alert_threshold - np.log(1000)) < 0.5
    tail = model.tail_probability(np.array([3.0, 5.0, 8.0]))
    np.testing.assert_allclose(tail, np.exp(-np.array([3.0, 5.0, 8.0])), rtol=0.3)
    p = model.p_anomaly(np.linspace(0, 20, 200))
    assert np.all(np.diff(p) >= 0)
    assert p[0] < 0.05
    assert p[-1] > 0.999


def test_the_tail_is_fitted_on_the_tail_when_there_are_enough_windows() -> None:
    """A machine's normal errors: a bulk, and 2 % of windows (its starts and stops) in a
    second mode. The GPD fitted from the 10 % above pot_level spans both, runs into the shape
    cap and misses the level 1 in 1,000 normal windows exceed (above it on the simulator,
    below it here); fitted from the top POT_TAIL_WINDOWS, it comes within 10 %."""
    rng = np.random.default_rng(5)
    errors = np.concatenate([rng.gamma(4.0, 0.0012, 5880), rng.gamma(9.0, 0.004, 120)])
    cfg = ThresholdConfig(method="pot", risk=1e-3, margin=1.0)
    empirical = float(np.quantile(errors, 1 - 1e-3))
    model = calibrate_threshold(errors, cfg)
    assert model.pot is not None
    assert model.pot.tail_fraction == pytest.approx(POT_TAIL_WINDOWS / errors.size, rel=0.05)
    assert model.alert_threshold == pytest.approx(empirical, rel=0.1)
    with pytest.MonkeyPatch.context() as mp:  # the rule before: always from pot_level
        mp.setattr("trainer.calibrate.POT_TAIL_WINDOWS", errors.size)
        wide = calibrate_threshold(errors, cfg)
    assert wide.pot is not None
    assert wide.pot.tail_fraction == pytest.approx(0.1)
    assert wide.pot.xi == 0.5  # the cap
    assert abs(wide.alert_threshold / empirical - 1) > 0.25
    short = calibrate_threshold(errors[:500], cfg)  # 500 windows: pot_level's 10 % is 50
    assert short.pot is not None
    assert short.pot.tail_fraction == pytest.approx(0.1, abs=0.01)


def test_percentile_method_and_beyond_the_table() -> None:
    errors = np.arange(1, 1001, dtype=np.float64)
    model = calibrate_threshold(
        errors, ThresholdConfig(method="percentile", percentile=99.0, margin=1.0)
    )
    assert model.pot is None
    assert abs(model.alert_threshold - np.percentile(errors, 99.0)) < 1e-9
    tail = model.tail_probability(np.array([500.0, 1000.0, 2000.0, 4000.0]))
    assert tail[0] > tail[1] > tail[2] > tail[3] > 0


def test_screen_keeps_the_required_share_of_stage2_detections() -> None:
    rng = np.random.default_rng(1)
    forest = rng.random(1000)
    detected = rng.random(1000) < 0.6
    t = screen_threshold(forest, detected, keep_recall=0.98)
    kept = np.mean(forest[detected] >= t)
    assert kept >= 0.98
    assert kept < 0.99  # and no lower threshold than needed
    assert screen_threshold(forest, np.zeros(1000, bool), keep_recall=0.98) == 0.0


def test_screen_never_drops_a_window_outside_the_limits() -> None:
    """Every detected window lies far outside the limits (scores 1 + exceedance): the rule
    alone would set the threshold among them; the cap passes every window outside."""
    rng = np.random.default_rng(3)
    outside = 1.0 + rng.uniform(0.5, 3.0, 500)
    detected = np.ones(500, bool)
    t = screen_threshold(outside, detected, keep_recall=0.98)
    assert t == OUTSIDE_LIMITS == 1.0
    barely_outside = np.array([1.0 + 1e-9])
    assert (barely_outside >= t).all()
    inside = rng.uniform(0.3, 0.7, 500)  # forest scores: the rule decides
    assert screen_threshold(inside, detected, keep_recall=0.98) < 0.7


def test_margin_scales_the_alert_threshold() -> None:
    errors = np.random.default_rng(2).exponential(1.0, size=5_000)
    base = calibrate_threshold(errors, ThresholdConfig(margin=1.0)).alert_threshold
    wide = calibrate_threshold(errors, ThresholdConfig(margin=2.0)).alert_threshold
    assert wide == pytest.approx(2.0 * base)


def test_margin_shrinks_with_a_long_history() -> None:
    cfg = ThresholdConfig(margin=2.0, margin_full_below=1000)
    assert cfg.effective_margin(400) == 2.0
    assert cfg.effective_margin(4000) == pytest.approx(1.25)
    errors = np.random.default_rng(3).exponential(1.0, size=5_000)
    short = calibrate_threshold(errors, cfg, history_samples=400).alert_threshold
    long = calibrate_threshold(errors, cfg, history_samples=100_000).alert_threshold
    assert long == pytest.approx(short / 2.0 * 1.01)


def test_the_threshold_records_the_error_statistic_it_was_calibrated_on() -> None:
    errors = np.random.default_rng(4).exponential(1.0, size=2_000)
    assert calibrate_threshold(errors, ThresholdConfig()).statistic == "channel_max"
    mean = calibrate_threshold(errors, ThresholdConfig(statistic="mean"))
    assert mean.statistic == "mean"
    with pytest.raises(ValueError, match="statistic"):
        ThresholdConfig(statistic="median")  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["pot", "percentile"])
def test_a_scaled_calibration_is_the_calibration_of_scaled_errors(method: str) -> None:
    """Export carries float's calibration to int8 by a factor: the scaled model judges errors
    ``f`` times as large exactly as the original judges the errors themselves."""
    rng = np.random.default_rng(5)
    errors = rng.gamma(2.0, 0.01, size=5_000)
    model = calibrate_threshold(errors, ThresholdConfig(method=method))
    scaled = model.scaled(1.25)
    assert scaled.alert_threshold == pytest.approx(1.25 * model.alert_threshold)
    probe = np.linspace(0.0, 3 * model.alert_threshold, 50)
    np.testing.assert_allclose(scaled.p_anomaly(1.25 * probe), model.p_anomaly(probe), atol=1e-12)
    assert (scaled.pot is None) == (method == "percentile")
    with pytest.raises(ValueError, match="positive number"):
        model.scaled(0.0)


def test_the_tail_ratio_is_read_where_the_threshold_lives() -> None:
    """int8 runs 2 % above float in the tail and 30 % above in the bulk, with three wild
    windows: the ratio is the tail's, and the wild ones do not move it."""
    rng = np.random.default_rng(6)
    ref = rng.gamma(2.0, 0.01, size=4_000)
    top = ref >= np.quantile(ref, 0.9)
    err = np.where(top, 1.02 * ref, 1.3 * ref)
    err[np.flatnonzero(top)[:3]] *= 6.0
    assert tail_error_ratio(ref, err) == pytest.approx(1.02)
    with pytest.raises(ValueError, match="equal 1-d"):
        tail_error_ratio(ref, err[:-1])
    with pytest.raises(ValueError, match="all zero"):
        tail_error_ratio(np.zeros(100), np.ones(100))
