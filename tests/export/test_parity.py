"""The parity set and comparison of ``export.parity``, on scores whose truth is known.

The error function here is the windows' own mean square (what a reconstruction error is for
a model that reconstructs zeros), so the sizing rule can be checked without a trained model;
the real models run in ``test_parity_gate.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from export.parity import (
    MAX_AUC_DROP,
    MAX_F1_DROP,
    RULE,
    SIGNIFICANCE,
    SIZED_BAND,
    SIZED_WINDOWS,
    compare,
    parity_set,
    sized_faults,
)

WINDOW, CHANNELS = 16, 3


def mean_square(w: np.ndarray) -> np.ndarray:
    return np.mean(np.square(w.astype(np.float64)), axis=(1, 2))


def normal_windows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, WINDOW, CHANNELS)).astype(np.float32)


def test_sized_faults_straddle_the_alert_threshold() -> None:
    normal = normal_windows(500)
    # A high alert threshold, as calibrated: the 99.9th percentile of normal error times 2.
    threshold = 2.0 * float(np.quantile(mean_square(normal), 0.999))
    sized = sized_faults(normal, mean_square, threshold, seed=4)
    ratio = mean_square(sized) / threshold
    assert sized.shape[1:] == (WINDOW, CHANNELS)
    assert SIZED_WINDOWS * 0.8 <= sized.shape[0] <= SIZED_WINDOWS
    assert ratio.min() >= SIZED_BAND[0]
    assert ratio.max() <= SIZED_BAND[1]
    # About half above the line: F1 at the threshold is neither 0 nor 1.
    assert 0.3 < np.mean(ratio >= 1.0) < 0.7
    np.testing.assert_array_equal(sized, sized_faults(normal, mean_square, threshold, seed=4))


def test_a_model_deaf_to_faults_gets_no_sized_fault() -> None:
    normal = normal_windows(100)
    sized = sized_faults(normal, lambda w: np.zeros(w.shape[0]), 1.0, seed=0)
    assert sized.shape == (0, WINDOW, CHANNELS)


def _scored(n_normal: int = 400, n_pos: int = 200) -> tuple:
    rng = np.random.default_rng(1)
    ps = parity_set(
        normal_windows(n_normal),
        normal_windows(n_pos, seed=2),
        np.zeros((0, WINDOW, CHANNELS), np.float32),
    )
    err = np.concatenate([rng.uniform(0.0, 0.4, n_normal), np.geomspace(0.5, 2.0, n_pos)])
    return ps, err


def test_int8_equal_to_float_passes_with_a_meaningful_f1() -> None:
    ps, err = _scored()
    spec, failures = compare(
        ps, err, err.copy(), threshold_float=1.0, threshold_int8=1.0, clipped=0
    )
    assert failures == []
    assert 0.5 < spec.f1_float == spec.f1_int8 < 0.8
    assert (spec.rule, spec.synthetic, spec.labelled) == (RULE, 200, 0)
    assert (spec.max_f1_drop, spec.max_auc_drop) == (MAX_F1_DROP, MAX_AUC_DROP)


def test_int8_that_misses_faults_near_the_line_fails_on_f1() -> None:
    ps, err = _scored()
    err_q = err.copy()
    err_q[ps.labels == 1] *= 0.9  # positives just above the line fall below it
    _, failures = compare(ps, err, err_q, threshold_float=1.0, threshold_int8=1.0, clipped=0)
    assert len(failures) == 1
    assert failures[0].startswith("F1 drops")


def test_int8_that_scrambles_the_ranking_fails_on_auc() -> None:
    ps, err = _scored()
    err_q = np.random.default_rng(5).permutation(err)
    _, failures = compare(ps, err, err_q, threshold_float=1.0, threshold_int8=1.0, clipped=0)
    assert any(f.startswith("ROC-AUC drops") for f in failures)


def test_no_positive_to_compare_on_is_a_failure() -> None:
    ps = parity_set(normal_windows(50), *(np.zeros((0, WINDOW, CHANNELS), np.float32),) * 2)
    err = np.linspace(0.0, 1.0, 50)
    _, failures = compare(ps, err, err, threshold_float=2.0, threshold_int8=2.0, clipped=0)
    assert len(failures) == 1
    assert "no anomalous window" in failures[0]


@pytest.mark.parametrize("labelled", [0, 7])
def test_parity_set_layout(labelled: int) -> None:
    ps = parity_set(
        normal_windows(10), normal_windows(4, 1), normal_windows(labelled, 2)[:labelled]
    )
    assert ps.labels.tolist() == [0] * 10 + [1] * (4 + labelled)
    assert (ps.normal, ps.synthetic, ps.labelled) == (10, 4, labelled)


def test_an_f1_drop_from_moves_both_ways_near_the_line_is_not_a_failure() -> None:
    ps, err = _scored()
    pos = np.flatnonzero(ps.labels == 1)
    above = pos[err[pos] >= 1.0]
    below = pos[err[pos] < 1.0]
    err_q = err.copy()
    err_q[above[:9]] = 0.99  # 9 caught by float, missed by int8
    err_q[below[-4:]] = 1.01  # 4 the other way: F1 drops by more than the limit, by chance
    spec, failures = compare(ps, err, err_q, threshold_float=1.0, threshold_int8=1.0, clipped=0)
    assert spec.f1_float - spec.f1_int8 > MAX_F1_DROP
    assert (spec.int8_worse, spec.int8_better) == (9, 4)
    assert spec.int8_worse_p is not None
    assert spec.int8_worse_p > SIGNIFICANCE
    assert failures == []


def test_a_short_history_gets_several_sized_faults_per_window() -> None:
    normal = normal_windows(40)  # SKAB's 400-row histories hold about 80
    threshold = 2.0 * float(np.quantile(mean_square(normal), 0.999))
    assert sized_faults(normal, mean_square, threshold, seed=0).shape[0] > SIZED_WINDOWS * 0.8
