"""Tests for trainer.evaluate.baselines on a synthetic, obviously separable data set."""

from __future__ import annotations

import numpy as np

from trainer.evaluate.baselines import MAX_OCSVM_TRAIN_ROWS, _subsample_rows, run_baselines

METHODS = {"isolation_forest", "lof", "ocsvm"}


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(600, 4))
    normal_test = rng.normal(size=(200, 4))
    outliers = rng.normal(loc=8.0, scale=0.3, size=(20, 4))
    test = np.vstack([normal_test, outliers])
    labels = np.r_[np.zeros(200, dtype=bool), np.ones(20, dtype=bool)]
    return train, test, labels


def test_baselines_rank_outlier_cluster_above_normal_points() -> None:
    train, test, labels = _data()
    results = run_baselines(train, test, seed=0)
    assert set(results) == METHODS
    for name, (score, pred) in results.items():
        assert score.shape == (len(test),), name
        assert pred.dtype == np.bool_, name
        # Every outlier scores above every normal test point...
        assert score[labels].min() > score[~labels].max(), name
        # ...and the 99 % training quantile flags all outliers and few normal points.
        assert pred[labels].all(), name
        assert pred[~labels].mean() < 0.1, name


def test_baselines_are_deterministic_for_a_seed() -> None:
    train, test, _ = _data()
    first = run_baselines(train, test, seed=3)
    second = run_baselines(train, test, seed=3)
    for name in METHODS:
        np.testing.assert_array_equal(first[name][0], second[name][0])


def test_subsample_is_capped_and_spans_the_range() -> None:
    idx = _subsample_rows(12_345, MAX_OCSVM_TRAIN_ROWS)
    assert len(idx) == MAX_OCSVM_TRAIN_ROWS
    assert idx[0] == 0
    assert idx[-1] == 12_344
    np.testing.assert_array_equal(_subsample_rows(10, MAX_OCSVM_TRAIN_ROWS), np.arange(10))
