"""Classic unsupervised detectors the trained model is compared against in the report.

Part of the trainer's evaluation step: on the same feature matrix the two-stage model was
trained and tested on, fit an Isolation Forest, a Local Outlier Factor and a one-class SVM on
the (normal) training rows, score the test rows and threshold each method at a quantile of its
own training scores. If the autoencoder does not beat these, it is not worth shipping. The
per-method metrics are computed by the caller with :mod:`trainer.evaluate.metrics`.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.svm import OneClassSVM

#: Kernel SVM training is roughly quadratic in rows; beyond this it dominates the evaluation time.
MAX_OCSVM_TRAIN_ROWS = 5_000
#: LOF's neighbour search over a large training set is slow too; cap it more loosely than the SVM
#: because LOF quality depends on density detail.
MAX_LOF_TRAIN_ROWS = 20_000
#: Expected share of outliers in the SVM's training set (normal data, so small).
OCSVM_NU = 0.01
#: scikit-learn's default neighbourhood size for LOF.
LOF_NEIGHBORS = 20
#: Trees in the baseline Isolation Forest (scikit-learn's default).
IFOREST_TREES = 100
#: Standard deviations below this are treated as constant columns (divide by 1 instead).
MIN_STD = 1e-12


def _subsample_rows(n_rows: int, cap: int) -> np.ndarray:
    """Evenly spaced row indices, at most ``cap`` of them.

    Even spacing (rather than a random draw) is deterministic and keeps the whole time span of
    the training recording represented.
    """
    if n_rows <= cap:
        return np.arange(n_rows)
    return np.unique(np.linspace(0, n_rows - 1, cap).round().astype(np.int64))


def _threshold_predict(
    train_scores: np.ndarray, test_scores: np.ndarray, quantile: float
) -> tuple[np.ndarray, np.ndarray]:
    threshold = float(np.quantile(train_scores, quantile))
    return test_scores.astype(np.float64), test_scores > threshold


def run_baselines(
    train_X: np.ndarray, test_X: np.ndarray, *, seed: int, quantile: float = 0.99
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fit the baselines on ``train_X`` and score ``test_X``.

    Returns ``{"isolation_forest" | "lof" | "ocsvm": (score, prediction)}`` where ``score`` is
    continuous with high = anomalous and ``prediction`` is ``score`` above the ``quantile`` of
    the same method's scores on the training rows. Features are standardised with the training
    mean and standard deviation first. LOF runs with ``novelty=True``; its training scores are
    the leave-self-out outlier factors, since scoring training rows through ``score_samples``
    would count each row as its own neighbour and set the threshold too low.
    """
    train = np.asarray(train_X, dtype=np.float64)
    test = np.asarray(test_X, dtype=np.float64)
    if train.ndim != 2 or test.ndim != 2:
        raise ValueError(f"feature matrices must be 2-D, got {train.shape} and {test.shape}")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train has {train.shape[1]} features but test has {test.shape[1]}")
    if train.shape[0] < 2:
        raise ValueError("need at least two training rows")
    if not (np.all(np.isfinite(train)) and np.all(np.isfinite(test))):
        raise ValueError("feature matrices contain NaN or infinite values")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")

    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std < MIN_STD] = 1.0
    train_z = (train - mean) / std
    test_z = (test - mean) / std

    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    iforest = IsolationForest(n_estimators=IFOREST_TREES, random_state=seed)
    iforest.fit(train_z)
    # score_samples is high for normal rows; negate so high = anomalous everywhere.
    results["isolation_forest"] = _threshold_predict(
        -iforest.score_samples(train_z), -iforest.score_samples(test_z), quantile
    )

    lof_rows = train_z[_subsample_rows(len(train_z), MAX_LOF_TRAIN_ROWS)]
    lof = LocalOutlierFactor(n_neighbors=min(LOF_NEIGHBORS, len(lof_rows) - 1), novelty=True)
    lof.fit(lof_rows)
    results["lof"] = _threshold_predict(
        -lof.negative_outlier_factor_, -lof.score_samples(test_z), quantile
    )

    svm_rows = train_z[_subsample_rows(len(train_z), MAX_OCSVM_TRAIN_ROWS)]
    ocsvm = OneClassSVM(nu=OCSVM_NU, gamma="scale")
    ocsvm.fit(svm_rows)
    # Threshold on all training rows, not just the fitted subset, so the quantile reflects the
    # whole normal recording.
    results["ocsvm"] = _threshold_predict(
        -ocsvm.decision_function(train_z), -ocsvm.decision_function(test_z), quantile
    )
    return results
