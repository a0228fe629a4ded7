"""Tests for trainer.evaluate.metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.evaluate.metrics import (
    NAB_PROFILES,
    detection_delays,
    nab_components,
    nab_score,
    nab_scores_pooled,
    point_adjusted_f1,
    point_metrics,
    pr_auc,
    roc_auc,
    summarize,
)

# 400 one-second samples with one anomaly over [100, 200): true change points at t=100 (rise)
# and t=200 (fall), each opening a 60 s window.
N = 400
TS = np.arange(N, dtype=np.float64)
Y_TRUE = np.zeros(N, dtype=bool)
Y_TRUE[100:200] = True
# NAB's scaled sigmoid 2/(1+exp(5y))-1 equals tanh(-5y/2); written independently here.
SIG_START = math.tanh(2.5)  # detection at the window start, y = -1
SIG_HALF = math.tanh(1.25)  # detection half-way through the window, y = -0.5
PERFECT = 2 * SIG_START  # two windows, standard profile
NULL = -2.0


def test_point_metrics_by_hand() -> None:
    y_true = np.array([0, 0, 1, 1, 1, 0, 0, 0, 1, 0])
    y_pred = np.array([0, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    m = point_metrics(y_true, y_pred)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2.0, 1.0, 5.0, 2.0)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(2 / (2 + (1 + 2) / 2))
    assert m["far"] == pytest.approx(1 / 6)
    assert m["mar"] == pytest.approx(0.5)


def test_point_metrics_zero_division_is_zero() -> None:
    m = point_metrics(np.zeros(5), np.zeros(5))
    assert m["precision"] == m["recall"] == m["f1"] == m["mar"] == 0.0
    assert m["far"] == 0.0
    assert m["tn"] == 5.0


def test_point_metrics_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="length"):
        point_metrics(np.zeros(3), np.zeros(4))


def test_point_adjusted_f1_by_hand() -> None:
    # Segment [2, 5) is hit once so all three samples count; segment [8, 9) is missed; the
    # alarm at index 1 stays a false positive: TP=3, FP=1, FN=1.
    y_true = np.array([0, 0, 1, 1, 1, 0, 0, 0, 1, 0])
    y_pred = np.array([0, 1, 0, 0, 1, 0, 0, 0, 0, 0])
    m = point_adjusted_f1(y_true, y_pred)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(0.75)


def test_roc_and_pr_auc_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    # 3 of 4 (positive, negative) pairs are ordered correctly.
    assert roc_auc(y, s) == pytest.approx(0.75)
    # Ranked: 0.8 (+) P=1 at R=0.5; 0.35 (+) P=2/3 at R=1. AP = 0.5*1 + 0.5*2/3.
    assert pr_auc(y, s) == pytest.approx(0.5 + 1 / 3)


def test_ranking_metrics_nan_with_one_class() -> None:
    assert math.isnan(roc_auc(np.zeros(4), np.arange(4.0)))
    assert math.isnan(pr_auc(np.ones(4), np.arange(4.0)))


def test_detection_delays_by_hand() -> None:
    y_true = np.zeros(70, dtype=bool)
    y_true[10:20] = y_true[30:40] = y_true[50:60] = True
    y_pred = np.zeros(70, dtype=bool)
    y_pred[5] = True  # before the first segment: a false alarm, not an early detection
    y_pred[13] = True  # 3 samples into segment 1
    y_pred[30:35] = True  # at the start of segment 2
    d = detection_delays(y_true, y_pred, period_s=0.5)
    assert d["n_segments"] == 3.0
    assert d["n_detected"] == 2.0
    assert d["delay_mean_s"] == pytest.approx(0.75)
    assert d["delay_median_s"] == pytest.approx(0.75)
    assert d["delay_max_s"] == pytest.approx(1.5)


def test_detection_delays_nothing_detected() -> None:
    d = detection_delays(np.array([0, 1, 1, 0]), np.zeros(4))
    assert d["n_segments"] == 1.0
    assert d["n_detected"] == 0.0
    assert math.isnan(d["delay_mean_s"])


def test_nab_perfect_detector_scores_100() -> None:
    for profile in NAB_PROFILES:
        assert nab_score(Y_TRUE, Y_TRUE, TS, profile=profile) == pytest.approx(100.0)


def test_nab_null_detector_scores_0() -> None:
    assert nab_score(Y_TRUE, np.zeros(N, dtype=bool), TS) == pytest.approx(0.0)


def test_nab_detection_one_sample_late_scores_about_100() -> None:
    pred = np.zeros(N, dtype=bool)
    pred[101:201] = True
    # y = (101 - 160) / 60 for both windows.
    expected = 100 * (2 * math.tanh(2.5 * 59 / 60) - NULL) / (PERFECT - NULL)
    score = nab_score(Y_TRUE, pred, TS)
    assert score == pytest.approx(expected)
    assert score > 99.0


def test_nab_late_detection_scores_less() -> None:
    pred = np.zeros(N, dtype=bool)
    pred[130:230] = True  # both edges half-way through their windows
    expected = 100 * (2 * SIG_HALF - NULL) / (PERFECT - NULL)
    assert nab_score(Y_TRUE, pred, TS) == pytest.approx(expected)
    assert expected == pytest.approx(93.04, abs=0.01)


def test_nab_detection_after_window_is_a_false_positive() -> None:
    pred = np.zeros(N, dtype=bool)
    pred[170:] = True  # rising edge 10 s after the first window closed, no falling edge
    comp = nab_components(Y_TRUE, pred, TS)
    # 170 falls between window 1 [100, 160) and window 2 [200, 260): an FP; both windows missed.
    assert (comp.n_windows, comp.n_detected, comp.n_false_positives) == (2, 0, 1)
    assert comp.score == pytest.approx(-0.11 - 2.0)


def test_nab_only_first_detection_in_window_counts() -> None:
    pred = np.zeros(N, dtype=bool)
    pred[100:200] = True
    pred[110:115] = False  # adds a fall at 110 and a rise at 115 inside window [100, 160)
    assert nab_score(Y_TRUE, pred, TS) == pytest.approx(100.0)


def test_nab_detector_firing_everywhere_scores_below_zero() -> None:
    always_on = np.ones(N, dtype=bool)
    # One rising edge at t=0, outside every window: one FP and two missed windows.
    expected = 100 * (-0.11 - 2.0 - NULL) / (PERFECT - NULL)
    assert nab_score(Y_TRUE, always_on, TS) == pytest.approx(expected)
    assert expected < 0

    toggling = np.arange(N) % 2 == 1
    # Catches both windows at their start but toggles 399 times, 279 of them outside windows.
    assert nab_components(Y_TRUE, toggling, TS).n_false_positives == N - 1 - 120
    assert nab_score(Y_TRUE, toggling, TS) < -500.0


def test_nab_profiles_weight_false_positives() -> None:
    pred = Y_TRUE.copy()
    pred[350:355] = True  # a spurious alarm: a rise and a fall, two false positives
    standard = nab_score(Y_TRUE, pred, TS, profile="standard")
    low_fp = nab_score(Y_TRUE, pred, TS, profile="low_fp")
    assert standard == pytest.approx(100 * (PERFECT - 2 * 0.11 - NULL) / (PERFECT - NULL))
    assert low_fp == pytest.approx(100 * (PERFECT - 2 * 0.22 - NULL) / (PERFECT - NULL))
    assert low_fp < standard


def test_nab_half_the_windows_caught_scores_50() -> None:
    pred = np.zeros(N, dtype=bool)
    pred[100:] = True  # rise at 100 caught at once, the fall at 200 is missed
    for profile in NAB_PROFILES:
        assert nab_score(Y_TRUE, pred, TS, profile=profile) == pytest.approx(50.0)


def test_nab_explicit_changepoints_and_timestamps() -> None:
    ts = np.arange(N, dtype=np.float64) * 2.0  # 2 s sampling: the 60 s window is 30 samples
    cp = np.zeros(N, dtype=bool)
    cp[100] = True  # only the onset is a scored change point
    pred = np.zeros(N, dtype=bool)
    pred[115:] = True  # t=230, window [200, 260): y = -0.5
    assert nab_score(Y_TRUE, pred, ts, true_cp=cp) == pytest.approx(
        100 * (SIG_HALF + 1.0) / (SIG_START + 1.0)
    )
    # The same change point given as an index list.
    assert nab_score(Y_TRUE, pred, ts, true_cp=np.array([100])) == pytest.approx(
        nab_score(Y_TRUE, pred, ts, true_cp=cp)
    )


def test_nab_overlapping_windows_are_cut() -> None:
    y_true = np.zeros(N, dtype=bool)
    y_true[100:110] = True  # windows [100, 110) and [110, 170)
    pred = np.zeros(N, dtype=bool)
    pred[105:110] = True  # rise at y = (105 - 110) / 10 = -0.5, fall at the 2nd window's start
    expected = 100 * (SIG_HALF + SIG_START - NULL) / (PERFECT - NULL)
    assert nab_score(y_true, pred, TS) == pytest.approx(expected)


def test_nab_no_changepoint_is_nan_but_pools() -> None:
    quiet = np.zeros(N, dtype=bool)
    spurious = np.zeros(N, dtype=bool)
    spurious[10:20] = True
    assert math.isnan(nab_score(quiet, spurious, TS))
    pooled = nab_scores_pooled([(Y_TRUE, Y_TRUE, TS, None), (quiet, spurious, TS, None)])
    assert pooled == pytest.approx(100 * (PERFECT - 2 * 0.11 - NULL) / (PERFECT - NULL))


def test_nab_pooling_sums_before_normalizing() -> None:
    pooled = nab_scores_pooled(
        [(Y_TRUE, Y_TRUE, TS, None), (Y_TRUE, np.zeros(N, dtype=bool), TS, None)]
    )
    assert pooled == pytest.approx(50.0)


def test_nab_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="profile"):
        nab_score(Y_TRUE, Y_TRUE, TS, profile="nope")
    with pytest.raises(ValueError, match="non-decreasing"):
        nab_score(Y_TRUE, Y_TRUE, TS[::-1].copy())


def test_summarize_combines_everything() -> None:
    score = Y_TRUE.astype(np.float64) + 0.01 * np.sin(TS)
    stage2 = np.zeros(N, dtype=bool)
    stage2[:100] = True
    result = summarize(Y_TRUE, Y_TRUE, score, TS, 1.0, stage2)
    assert result["f1"] == pytest.approx(1.0)
    assert result["pa_f1"] == pytest.approx(1.0)
    assert result["roc_auc"] == pytest.approx(1.0)
    assert result["pr_auc"] == pytest.approx(1.0)
    assert result["delay_mean_s"] == 0.0
    assert result["nab_standard"] == pytest.approx(100.0)
    assert result["nab_low_fn"] == pytest.approx(100.0)
    assert result["stage2_fraction"] == pytest.approx(0.25)
    assert all(isinstance(v, float) for v in result.values())
    assert math.isnan(summarize(Y_TRUE, Y_TRUE, score, TS, 1.0, None)["stage2_fraction"])
