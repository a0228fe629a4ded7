"""Detection-quality metrics for the trainer's evaluation step.

Sits after threshold selection in the desktop pipeline: the trainer scores a labelled test
recording, turns scores into a binary alarm with the chosen threshold and hands the labels,
scores and alarms to :func:`summarize`. The report (:mod:`trainer.evaluate.report`) and the
baseline comparison (:mod:`trainer.evaluate.baselines`) both consume the flat dictionaries these
functions return.

All functions take 1-D arrays of equal length: ``y_true`` / ``y_pred`` are binary (any dtype
whose non-zero entries mean "anomalous"), ``score`` is continuous with high meaning anomalous.
They are pure functions of their inputs; only the ranking metrics use scikit-learn.

Three families are provided because each answers a different operator question:

* point-wise metrics (precision, recall, F1, FAR, MAR) — how many samples are labelled right;
* event metrics (point-adjusted F1, detection delay) — are incidents caught, and how fast;
* the NAB score in the SKAB change-point protocol — the benchmark number published for SKAB,
  which rewards early detection of both the start and the end of an anomaly and penalises
  spurious alarm toggles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

# --------------------------------------------------------------------------------------------
# NAB constants
# --------------------------------------------------------------------------------------------

#: Steepness of NAB's scaled sigmoid; NAB fixes it at 5 so that a detection at the very start of
#: a window earns ~0.987 of the true-positive weight and one at the window end earns 0.
NAB_SIGMOID_STEEPNESS = 5.0
#: Relative position of a window's first sample in NAB's convention (window end is 0).
NAB_WINDOW_START_POSITION = -1.0
#: NAB reports scores on a 0..100 scale (null detector 0, perfect detector 100).
NAB_SCALE = 100.0
#: Length of the scoring window to the right of each true change point, as used for SKAB.
DEFAULT_NAB_WINDOW_S = 60.0
#: The upper detection-delay percentile reported next to the median.
DELAY_PERCENTILE = 90.0


@dataclass(frozen=True)
class NabProfile:
    """Weights of one NAB application profile (all positive; signs are applied by the scorer)."""

    a_tp: float
    a_fp: float
    a_fn: float


#: The three profiles of NAB / SKAB: "low_fp" doubles the cost of a false alarm and "low_fn"
#: doubles the cost of a missed change point.
NAB_PROFILES: dict[str, NabProfile] = {
    "standard": NabProfile(a_tp=1.0, a_fp=0.11, a_fn=1.0),
    "low_fp": NabProfile(a_tp=1.0, a_fp=0.22, a_fn=1.0),
    "low_fn": NabProfile(a_tp=1.0, a_fp=0.11, a_fn=2.0),
}


@dataclass(frozen=True)
class NabComponents:
    """Un-normalised NAB result of one recording, kept apart so files can be pooled."""

    score: float
    null_score: float
    perfect_score: float
    n_windows: int
    n_detected: int
    n_false_positives: int

    def normalized(self) -> float:
        """``100 * (S - S_null) / (S_perfect - S_null)``; NaN when there is no window to score."""
        return _normalize_nab(self.score, self.null_score, self.perfect_score)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _as_mask(values: np.ndarray, name: str) -> np.ndarray:
    """Return ``values`` as a 1-D boolean array (non-zero = anomalous)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr != 0


def _check_same_length(**arrays: np.ndarray) -> int:
    """Raise unless every array has the same length; return that length."""
    lengths = {name: len(arr) for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays differ in length: {lengths}")
    return next(iter(lengths.values()))


def _safe_div(num: float, den: float) -> float:
    """Division that reports 0.0 instead of failing when a class is empty."""
    return float(num) / float(den) if den else 0.0


def segments(mask: np.ndarray) -> np.ndarray:
    """Contiguous runs of True as an ``(k, 2)`` int array of ``[start, stop)`` indices."""
    padded = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return edges.reshape(-1, 2)


def _edges(mask: np.ndarray) -> np.ndarray:
    """Indices where a binary series changes value (rising and falling edges).

    The series is taken to be preceded by "normal", so an alarm that is already on at the first
    sample counts as a rising edge at index 0: it is an alarm the operator would see. No falling
    edge is invented at the end of the series.
    """
    padded = np.concatenate(([False], mask))
    return np.flatnonzero(padded[1:] != padded[:-1])


# --------------------------------------------------------------------------------------------
# Point-wise metrics
# --------------------------------------------------------------------------------------------


def point_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Confusion counts and the rates derived from them, one sample = one decision.

    Keys: ``tp, fp, tn, fn`` (counts, as floats), ``precision``, ``recall``,
    ``f1 = TP / (TP + (FP + FN) / 2)``, ``far = FP / (FP + TN)`` (false alarm rate) and
    ``mar = FN / (FN + TP)`` (missed alarm rate). A rate whose denominator is 0 is reported as 0.0.
    """
    truth = _as_mask(y_true, "y_true")
    pred = _as_mask(y_pred, "y_pred")
    _check_same_length(y_true=truth, y_pred=pred)
    tp = int(np.count_nonzero(truth & pred))
    fp = int(np.count_nonzero(~truth & pred))
    tn = int(np.count_nonzero(~truth & ~pred))
    fn = int(np.count_nonzero(truth & ~pred))
    return {
        "tp": float(tp),
        "fp": float(fp),
        "tn": float(tn),
        "fn": float(fn),
        "precision": _safe_div(tp, tp + fp),
        "recall": _safe_div(tp, tp + fn),
        "f1": _safe_div(tp, tp + (fp + fn) / 2.0),
        "far": _safe_div(fp, fp + tn),
        "mar": _safe_div(fn, fn + tp),
    }


def point_adjusted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 under the point-adjust protocol.

    If any sample of a true anomaly segment is predicted, every sample of that segment counts as
    predicted; predictions outside true segments are left as they are. This measures whether
    incidents are caught at all, regardless of how much of each incident the alarm covers.
    Note that the protocol is known to be generous; read it next to the point-wise F1.
    """
    truth = _as_mask(y_true, "y_true")
    pred = _as_mask(y_pred, "y_pred")
    _check_same_length(y_true=truth, y_pred=pred)
    adjusted = pred.copy()
    for start, stop in segments(truth):
        if pred[start:stop].any():
            adjusted[start:stop] = True
    pm = point_metrics(truth, adjusted)
    return {"precision": pm["precision"], "recall": pm["recall"], "f1": pm["f1"]}


# --------------------------------------------------------------------------------------------
# Ranking metrics
# --------------------------------------------------------------------------------------------


def _ranking_inputs(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = _as_mask(y_true, "y_true")
    values = np.asarray(score, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"score must be 1-D, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("score contains NaN or infinite values")
    _check_same_length(y_true=truth, score=values)
    return truth, values


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of the continuous score; NaN when only one class is present."""
    truth, values = _ranking_inputs(y_true, score)
    if truth.all() or not truth.any():
        return float("nan")
    return float(roc_auc_score(truth, values))


def pr_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve); NaN with only one class."""
    truth, values = _ranking_inputs(y_true, score)
    if truth.all() or not truth.any():
        return float("nan")
    return float(average_precision_score(truth, values))


# --------------------------------------------------------------------------------------------
# Event metrics
# --------------------------------------------------------------------------------------------


def detection_delays(
    y_true: np.ndarray, y_pred: np.ndarray, period_s: float = 1.0
) -> dict[str, float]:
    """Time from the start of each true anomaly segment to the first alarm inside it.

    Only alarms inside the segment count (an alarm raised before the segment starts is a false
    alarm, not an early detection). Returns ``delay_mean_s``, ``delay_median_s``,
    ``delay_p90_s``, ``delay_max_s`` and the same median / p90 / max in samples
    (``delay_median_samples`` ...) over the detected segments (NaN when none is detected),
    ``n_segments`` and ``n_detected``. ``period_s`` is the sampling period that converts samples
    to seconds. :mod:`trainer.evaluate.per_kind` calls this once per fault kind.
    """
    if not period_s > 0:
        raise ValueError(f"period_s must be positive, got {period_s}")
    truth = _as_mask(y_true, "y_true")
    pred = _as_mask(y_pred, "y_pred")
    _check_same_length(y_true=truth, y_pred=pred)
    runs = segments(truth)
    delays: list[int] = []
    for start, stop in runs:
        hits = np.flatnonzero(pred[start:stop])
        if hits.size:
            delays.append(int(hits[0]))
    nan = float("nan")
    arr = np.asarray(delays, dtype=np.float64)
    stats = {
        "mean": float(arr.mean()) if arr.size else nan,
        "median": float(np.median(arr)) if arr.size else nan,
        "p90": float(np.percentile(arr, DELAY_PERCENTILE)) if arr.size else nan,
        "max": float(arr.max()) if arr.size else nan,
    }
    result = {f"delay_{name}_s": value * period_s for name, value in stats.items()}
    for name in ("median", "p90", "max"):
        result[f"delay_{name}_samples"] = stats[name]
    result["n_segments"] = float(len(runs))
    result["n_detected"] = float(arr.size)
    return result


# --------------------------------------------------------------------------------------------
# NAB score, SKAB change-point protocol
# --------------------------------------------------------------------------------------------


def _scaled_sigmoid(position: np.ndarray) -> np.ndarray:
    """NAB's scaled sigmoid ``2 / (1 + exp(5 y)) - 1``: ~0.987 at y = -1, 0 at y = 0."""
    return 2.0 / (1.0 + np.exp(NAB_SIGMOID_STEEPNESS * position)) - 1.0


def _normalize_nab(score: float, null_score: float, perfect_score: float) -> float:
    span = perfect_score - null_score
    if span <= 0:
        # No scoring window at all: every detector ties with the null detector, so the
        # normalised score is undefined. Pool such files with others instead.
        return float("nan")
    return NAB_SCALE * (score - null_score) / span


def _true_changepoint_indices(truth: np.ndarray, true_cp: np.ndarray | None) -> np.ndarray:
    if true_cp is None:
        return _edges(truth)
    cp = np.asarray(true_cp)
    if cp.ndim != 1:
        raise ValueError(f"true_cp must be 1-D, got shape {cp.shape}")
    if cp.shape == truth.shape:
        # A per-sample flag column such as SKAB's ``changepoint``.
        return np.flatnonzero(cp)
    # Otherwise an explicit list of sample indices.
    idx = cp.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= truth.size):
        raise ValueError("true_cp indices fall outside the series")
    return np.unique(idx)


def nab_components(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    timestamps_s: np.ndarray,
    *,
    window_s: float = DEFAULT_NAB_WINDOW_S,
    profile: str = "standard",
    true_cp: np.ndarray | None = None,
) -> NabComponents:
    """Raw NAB score, null score and perfect score of one recording (see :func:`nab_score`)."""
    if profile not in NAB_PROFILES:
        raise ValueError(f"unknown NAB profile {profile!r}; expected one of {list(NAB_PROFILES)}")
    if not window_s > 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    weights = NAB_PROFILES[profile]
    truth = _as_mask(y_true, "y_true")
    pred = _as_mask(y_pred, "y_pred")
    ts = np.asarray(timestamps_s, dtype=np.float64)
    _check_same_length(y_true=truth, y_pred=pred, timestamps_s=ts)
    if ts.ndim != 1 or not np.all(np.isfinite(ts)):
        raise ValueError("timestamps_s must be a finite 1-D array")
    if np.any(np.diff(ts) < 0):
        raise ValueError("timestamps_s must be non-decreasing")

    # Scoring windows: [cp, cp + window_s) to the right of each true change point. Where windows
    # would overlap the earlier one is cut at the later one's start (SKAB's "cut left"), so each
    # detection belongs to at most one window.
    starts = np.unique(ts[_true_changepoint_indices(truth, true_cp)])
    ends = starts + window_s
    if starts.size > 1:
        ends[:-1] = np.minimum(ends[:-1], starts[1:])
    n_windows = int(starts.size)

    detections = ts[_edges(pred)]
    window_of = np.searchsorted(starts, detections, side="right") - 1
    inside = window_of >= 0
    inside[inside] = detections[inside] < ends[window_of[inside]]

    # Detections are in time order, so np.unique's first index is each window's earliest one;
    # later detections in the same window are ignored, as in NAB.
    detected_windows, first = np.unique(window_of[inside], return_index=True)
    first_times = detections[inside][first]
    win_len = ends[detected_windows] - starts[detected_windows]
    position = (first_times - ends[detected_windows]) / win_len  # in [-1, 0)
    tp_score = float(weights.a_tp * _scaled_sigmoid(position).sum())

    n_detected = int(detected_windows.size)
    n_fp = int(np.count_nonzero(~inside))
    score = tp_score - weights.a_fp * n_fp - weights.a_fn * (n_windows - n_detected)
    null_score = -weights.a_fn * n_windows
    perfect_score = (
        n_windows * weights.a_tp * float(_scaled_sigmoid(np.asarray(NAB_WINDOW_START_POSITION)))
    )
    return NabComponents(
        score=score,
        null_score=null_score,
        perfect_score=perfect_score,
        n_windows=n_windows,
        n_detected=n_detected,
        n_false_positives=n_fp,
    )


# The positional signature is the public contract other trainer modules call, hence the noqa.
def nab_score(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    timestamps_s: np.ndarray,
    window_s: float = DEFAULT_NAB_WINDOW_S,
    profile: str = "standard",
    true_cp: np.ndarray | None = None,
) -> float:
    """NAB score (0 = null detector, 100 = perfect) in the SKAB change-point protocol.

    Protocol, following SKAB's ``evaluating.py`` (``evaluating_change_point(..., metric='nab')``):

    * True change points are the rising and falling edges of ``y_true``, or the samples flagged
      in ``true_cp`` (SKAB files carry a ``changepoint`` column). Predicted change points are the
      rising and falling edges of ``y_pred``; the series counts as starting "normal", so an alarm
      on at the first sample is an edge.
    * Each true change point opens a window of ``window_s`` seconds to its right (SKAB's
      ``numenta_time``); overlapping windows are cut at the next window's start ("cut left").
    * SKAB scores the earliest prediction in each window with a sigmoid that falls from ``A_tp``
      to ``A_fp`` across the window (plus a 25 % tail past it), counts every prediction before
      the first window and in the gaps between windows as a false positive of weight ``A_fp``,
      adds ``A_fn`` per window without a prediction, and normalises with ``S_null = n * A_fn``
      and ``S_perfect = n * A_tp`` after summing over files.

    This implementation keeps SKAB's windows, flat false-positive cost, missed-window cost and
    pooling, but scores the earliest detection with NAB's own scaled sigmoid:
    with ``y = (t - window_end) / window_length`` in ``[-1, 0)``, a true positive earns
    ``A_tp * (2 / (1 + exp(5 y)) - 1)`` (≈0.987·A_tp at the window start, → 0 at its end). Later
    detections in the same window are ignored. Every detection outside all windows costs
    ``A_fp`` whatever its distance from the previous window (NAB proper would scale it by the
    sigmoid of its position after the preceding window; SKAB does not). A missed window costs
    ``A_fn``. The perfect detector is scored by the same rule (a detection at each window's
    start), so such a detector gets exactly 100, the null detector (no alarms) 0, and one that
    toggles more often than it catches windows goes below 0.

    Returns NaN when the recording has no true change point (normalisation undefined); pool such
    files with :func:`nab_scores_pooled`.
    """
    return nab_components(
        y_true, y_pred, timestamps_s, window_s=window_s, profile=profile, true_cp=true_cp
    ).normalized()


def nab_scores_pooled(
    files: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]],
    window_s: float = DEFAULT_NAB_WINDOW_S,
    profile: str = "standard",
) -> float:
    """NAB score over several recordings, pooled the way SKAB reports its benchmark.

    ``files`` holds ``(y_true, y_pred, timestamps_s, true_cp)`` per recording. Raw, null and
    perfect scores are summed over files before normalising, so a file with many change points
    weighs more than one with few and files without any change point still contribute their
    false positives.
    """
    total = null = perfect = 0.0
    for y_true, y_pred, ts, true_cp in files:
        comp = nab_components(
            y_true, y_pred, ts, window_s=window_s, profile=profile, true_cp=true_cp
        )
        total += comp.score
        null += comp.null_score
        perfect += comp.perfect_score
    return _normalize_nab(total, null, perfect)


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------


# The positional signature is the public contract other trainer modules call, hence the noqa.
def summarize(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    score: np.ndarray,
    timestamps_s: np.ndarray,
    period_s: float,
    reached_stage2: np.ndarray | None,
    *,
    nab_window_s: float = DEFAULT_NAB_WINDOW_S,
    true_cp: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics of one evaluation run as one flat ``name -> float`` dictionary.

    Point-wise keys as in :func:`point_metrics`; ``pa_precision``, ``pa_recall``, ``pa_f1``
    from :func:`point_adjusted_f1`; ``roc_auc`` and ``pr_auc``; the delay keys of
    :func:`detection_delays`; ``nab_standard``, ``nab_low_fp``, ``nab_low_fn``; and
    ``stage2_fraction``: the share of samples the Isolation Forest screen passed on to the
    autoencoder (NaN when ``reached_stage2`` is not given). That share drives the gateway's
    CPU load, which is why it sits next to the quality metrics.
    """
    result: dict[str, float] = dict(point_metrics(y_true, y_pred))
    for key, value in point_adjusted_f1(y_true, y_pred).items():
        result[f"pa_{key}"] = value
    result["roc_auc"] = roc_auc(y_true, score)
    result["pr_auc"] = pr_auc(y_true, score)
    result.update(detection_delays(y_true, y_pred, period_s))
    for name in NAB_PROFILES:
        result[f"nab_{name}"] = nab_score(
            y_true, y_pred, timestamps_s, window_s=nab_window_s, profile=name, true_cp=true_cp
        )
    if reached_stage2 is None:
        result["stage2_fraction"] = float("nan")
    else:
        stage2 = _as_mask(reached_stage2, "reached_stage2")
        _check_same_length(y_true=np.asarray(y_true), reached_stage2=stage2)
        result["stage2_fraction"] = float(stage2.mean()) if stage2.size else 0.0
    return result
