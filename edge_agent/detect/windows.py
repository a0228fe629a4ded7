"""Sliding windows and their summary features: the input to both detector stages.

Sits between the sample grid (``edge_agent.data.grid``) and the detectors. The trainer imports
these exact kernels, so the forest is trained on the same numbers the gateway computes.

A window ending at grid point ``k`` covers points ``k-W+1 .. k`` of one segment. Its features,
per channel over the normalized window, are (in this order):

``mean, std, min, max, last - first, mean |step|, last-quarter mean - first-three-quarters mean``

The last two react to noise bursts and to a fresh level change that the window's mean has not
caught up with yet.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge_agent.kernels import jit

FEATURE_NAMES = ("mean", "std", "min", "max", "delta", "mean_abs_step", "recent_shift")
FEATURES_PER_CHANNEL = len(FEATURE_NAMES)
# Fraction of the window taken as "recent" for the recent_shift feature.
RECENT_FRACTION = 0.25
# 2: adds SPE/T² window statistics after the per-channel features.
FEATURE_SET_VERSION = 2

F32 = npt.NDArray[np.float32]


@jit
def normalize(
    values: npt.NDArray[np.float64], mean: npt.NDArray[np.float64], scale: npt.NDArray[np.float64]
) -> F32:  # pragma: no cover - compiled
    """``(values - mean) / scale`` per channel, as float32."""
    m, c = values.shape
    out = np.empty((m, c), np.float32)
    for i in range(m):
        for j in range(c):
            out[i, j] = (values[i, j] - mean[j]) / scale[j]
    return out


@jit
def window_ends(
    segment_start: npt.NDArray[np.int64],
    imputed: npt.NDArray[np.bool_],
    window: int,
    hop: int,
    max_imputed_fraction: float,
) -> npt.NDArray[np.int64]:  # pragma: no cover - compiled
    """Grid indices at which a complete window ends, every ``hop`` points of a segment.

    Windows with more imputed cells than ``max_imputed_fraction`` are left out: they say more
    about the sensor link than about the machine.
    """
    m, c = imputed.shape
    out = np.empty(m, np.int64)
    # cum[k] = imputed cells in grid points [0, k)
    cum = np.zeros(m + 1, np.int64)
    for k in range(m):
        row = 0
        for j in range(c):
            if imputed[k, j]:
                row += 1
        cum[k + 1] = cum[k] + row
    n = 0
    limit = max_imputed_fraction * window * c
    for k in range(m):
        first = k - window + 1
        if first < segment_start[k]:
            continue
        if (k - segment_start[k] - (window - 1)) % hop != 0:
            continue
        if cum[k + 1] - cum[first] > limit:
            continue
        out[n] = k
        n += 1
    return out[:n]


@jit
def window_features(xn: F32, ends: npt.NDArray[np.int64], window: int) -> F32:  # pragma: no cover
    """Summary features of the windows ending at ``ends``; shape ``(len(ends), C * 7)``.

    Every sum runs over the window in time order (the trainer's numbers, to the last bit);
    the loop is split where the recent part starts, so its steps carry no branch."""
    _m, c = xn.shape
    nf = FEATURES_PER_CHANNEL
    out = np.empty((ends.shape[0], c * nf), np.float32)
    recent = max(1, int(window * RECENT_FRACTION))
    older = window - recent
    for w in range(ends.shape[0]):
        k = ends[w]
        first = k - window + 1
        split = max(k - recent + 1, first + 1)  # the first step after `first` in the recent part
        for j in range(c):
            v = np.float64(xn[first, j])
            s = 0.0 + v  # 0.0 + v, not v: a sum starting at 0.0 turns -0.0 into 0.0
            s2 = 0.0 + v * v
            lo = min(np.inf, v)
            hi = max(-np.inf, v)
            steps = 0.0
            s_recent = 0.0 + v if first > k - recent else 0.0
            prev = v
            for t in range(first + 1, split):
                v = np.float64(xn[t, j])
                s += v
                s2 += v * v
                lo = min(lo, v)
                hi = max(hi, v)
                steps += abs(v - prev)
                prev = v
            for t in range(split, k + 1):
                v = np.float64(xn[t, j])
                s += v
                s2 += v * v
                lo = min(lo, v)
                hi = max(hi, v)
                steps += abs(v - prev)
                prev = v
                s_recent += v
            mean = s / window
            var = max(s2 / window - mean * mean, 0.0)
            mean_old = (s - s_recent) / older if older > 0 else mean
            base = j * nf
            out[w, base + 0] = mean
            out[w, base + 1] = np.sqrt(var)
            out[w, base + 2] = lo
            out[w, base + 3] = hi
            out[w, base + 4] = xn[k, j] - xn[first, j]
            out[w, base + 5] = steps / max(window - 1, 1)
            out[w, base + 6] = s_recent / recent - mean_old
    return out


@jit
def gather_windows(xn: F32, ends: npt.NDArray[np.int64], window: int) -> F32:  # pragma: no cover
    """The normalized windows ending at ``ends`` as one ``(n, W, C)`` float32 array."""
    _m, c = xn.shape
    out = np.empty((ends.shape[0], window, c), np.float32)
    for w in range(ends.shape[0]):
        first = ends[w] - window + 1
        for t in range(window):
            for j in range(c):
                out[w, t, j] = xn[first + t, j]
    return out


def screen_features(
    xn: F32, stats: F32, ends: npt.NDArray[np.int64], window: int
) -> F32:
    """The forest's input: per-channel features, then window mean/max of each sample statistic
    (SPE and T² from :mod:`edge_agent.detect.projection`; ``stats`` may have zero columns)."""
    from edge_agent.detect.projection import window_stat_features

    base = window_features(xn, ends, window)
    if stats.shape[1] == 0:
        return base
    return np.concatenate([base, window_stat_features(stats, ends, window)], axis=1)


def feature_names(channels: tuple[str, ...] | list[str]) -> list[str]:
    """Column names of :func:`window_features` output, for reports and attribution."""
    return [f"{ch}:{f}" for ch in channels for f in FEATURE_NAMES]
