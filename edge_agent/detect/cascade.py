"""The two-stage cascade: forest screen, then the int8 autoencoder on what the screen flags.

One contract for every caller: given normalized windows and their features, return per window
the stage that decided, its score, ``p_anomaly``, the raw alert decision and, for stage-2
windows, the per-channel share of the reconstruction error (for attribution). ``replay``, the
daemon and the trainer's evaluation all call :meth:`Cascade.score`.

The daemon scores one window per sample, so the per-call overhead matters as much as the
math: the reconstruction error is one Numba kernel, and ``score`` builds its outputs directly
in the common all-screened and all-stage-2 cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.detect.forest import FlatForest
from edge_agent.detect.ring import WindowSource
from edge_agent.detect.threshold import ErrorStatistic, ThresholdModel
from edge_agent.kernels import jit, kernel

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

STAGE_NONE = 0  # no complete window yet (warm-up, outage, too many imputed samples)
STAGE_SCREEN = 1  # the forest passed the window as normal
STAGE_AUTOENCODER = 2  # the autoencoder scored the window
STAGE_SKIPPED = -1  # not scorable: non-finite values reached the window (counted, never fatal)


class Reconstructor(Protocol):
    """What stage 2 needs from an autoencoder backend (int8 TFLite on the device)."""

    def reconstruct(self, windows: F32) -> F32: ...


@dataclass(frozen=True)
class WindowScores:
    stage: npt.NDArray[np.int8]
    score: F64  # forest score for stage 1, reconstruction error for stage 2
    p_anomaly: F64  # 0 where the screen passed the window
    raw_alert: npt.NDArray[np.bool_]
    error: F64  # reconstruction error; NaN where stage 2 did not run
    contributions: F32  # (n, C) share of the error per channel; 0 where stage 2 did not run

    def with_part(self, idx: npt.NDArray[np.intp], part: WindowScores) -> WindowScores:
        """These scores with windows ``idx`` taken from ``part`` (their scores, in order)."""
        fields = {name: getattr(self, name).copy() for name in _SCORE_FIELDS}
        for name, values in fields.items():
            values[idx] = getattr(part, name)
        return WindowScores(**fields)


_SCORE_FIELDS = ("stage", "score", "p_anomaly", "raw_alert", "error", "contributions")


# Below this many terms numpy sums a contiguous row one by one; from it on, pairwise.
_PAIRWISE_MIN = 8
# numpy's pairwise summation adds up to this many terms with 8 accumulators and splits longer
# rows in two. The kernel covers rows up to this length (Numba cannot cache a recursive
# function); longer ones take the numpy formula.
_PAIRWISE_BLOCK = 128


@jit
def _numpy_sum(a: F64, n: int) -> float:  # pragma: no cover - compiled
    """``a[:n].sum()`` in numpy's own order (``pairwise_sum``, n <= 128), to the last bit."""
    if n < _PAIRWISE_MIN:
        s = 0.0
        for i in range(n):
            s += a[i]
        return s
    r0, r1, r2, r3, r4, r5, r6, r7 = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
    i = 8
    while i < n - n % 8:
        r0 += a[i]
        r1 += a[i + 1]
        r2 += a[i + 2]
        r3 += a[i + 3]
        r4 += a[i + 4]
        r5 += a[i + 5]
        r6 += a[i + 6]
        r7 += a[i + 7]
        i += 8
    s = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        s += a[i]
        i += 1
    return float(s)


@kernel("f4[:,:,:], f4[:,:,:], b1 -> (f8[:], f4[:,:])")
def _error_kernel(
    windows: F32, recon: F32, channel_max: bool
) -> tuple[F64, F32]:  # pragma: no cover - compiled
    n, w, c = windows.shape
    err = np.empty(n, np.float64)
    share = np.empty((n, c), np.float32)
    per_channel = np.empty(c, np.float64)
    squares = np.empty(w, np.float64)
    for i in range(n):
        if c == 1:
            # One channel: the time axis is contiguous, and numpy sums it pairwise.
            for t in range(w):
                d = np.float64(windows[i, t, 0]) - np.float64(recon[i, t, 0])
                squares[t] = d * d
            per_channel[0] = _numpy_sum(squares, w)
        else:
            # Over a non-contiguous time axis numpy adds the steps in order.
            per_channel[:] = 0.0
            for t in range(w):
                for j in range(c):
                    d = np.float64(windows[i, t, j]) - np.float64(recon[i, t, j])
                    per_channel[j] += d * d
        for j in range(c):
            per_channel[j] /= w
        total = _numpy_sum(per_channel, c)
        err[i] = per_channel.max() if channel_max else total / c
        for j in range(c):
            share[i, j] = per_channel[j] / total if total > 0 else 0.0
    return err, share


def reconstruction_error(
    windows: F32, recon: F32, statistic: ErrorStatistic
) -> tuple[F64, F32]:
    """Each window's error by ``statistic``, and each channel's share of its squared error.

    Per channel, the mean squared error over the window's samples; the window's error is their
    mean (``mean``) or their largest (``channel_max``: a fault in one of C channels is not
    diluted C times). Bit for bit what ``np.square(w - r).mean(axis=1)`` and its mean, max and
    sum over channels give in float64: the trainer calibrated the threshold on these very
    numbers.
    """
    if statistic not in ("mean", "channel_max"):
        raise ValueError(f"unknown error statistic {statistic!r}; known: mean, channel_max")
    w = np.ascontiguousarray(windows)
    r = np.ascontiguousarray(recon)
    if w.ndim != 3 or w.shape != r.shape:
        raise ValueError(f"windows {w.shape} and reconstruction {r.shape} must be (n, W, C)")
    _, steps, c = w.shape
    channel_max = statistic == "channel_max"
    if c > _PAIRWISE_BLOCK or (c == 1 and steps > _PAIRWISE_BLOCK):
        return _error_numpy(w, r, channel_max)
    return _error_kernel(w, r, channel_max)


def _error_numpy(windows: F32, recon: F32, channel_max: bool) -> tuple[F64, F32]:
    """The numpy formula, for the shapes the kernel does not cover."""
    sq = np.square(windows.astype(np.float64) - recon.astype(np.float64))
    per_channel = sq.mean(axis=1)  # (n, C)
    err = per_channel.max(axis=1) if channel_max else per_channel.mean(axis=1)
    total = per_channel.sum(axis=1, keepdims=True)
    share = np.divide(per_channel, total, out=np.zeros_like(per_channel), where=total > 0)
    return err, share.astype(np.float32)


class Cascade:
    """Forest screen + autoencoder + calibrated threshold.

    Built from a bundle by :func:`edge_agent.model_slot.load_cascade` on the device, or from a
    trainer run's float model at the desk."""

    def __init__(
        self,
        *,
        forest: FlatForest,
        screen_threshold: float,
        autoencoder: Reconstructor,
        threshold: ThresholdModel,
    ) -> None:
        self.forest = forest
        self.screen_threshold = screen_threshold
        self.autoencoder = autoencoder
        self.threshold = threshold

    def score(
        self, windows: F32 | WindowSource, features: F32, *, screen: bool = True
    ) -> WindowScores:
        """Score windows ``(n, W, C)`` with their features ``(n, F)``; a pipeline passes a
        :class:`WindowSource`, which gathers only the windows stage 2 reads.

        ``screen=False`` sends every window to stage 2 (used to measure stage 2 alone).
        """
        n, _, c = windows.shape
        # A non-finite value in a window shows in its features (mean, min, max carry it).
        finite = np.asarray(np.isfinite(features).all(axis=1), np.bool_)
        if not finite.all():
            return self._score_finite_only(windows, features, finite, screen=screen)
        if screen:
            # The residual test reads every window's values, in place (WindowSource.rows).
            forest_score = self.forest.screen_score(features, windows)
            idx = np.flatnonzero(forest_score >= self.screen_threshold)
        else:
            forest_score, idx = np.zeros(n), np.arange(n)  # every window's score is its error
        if idx.size == 0:
            return WindowScores(
                np.full(n, STAGE_SCREEN, np.int8),
                forest_score,
                np.zeros(n, np.float64),
                np.zeros(n, np.bool_),
                np.full(n, np.nan),
                np.zeros((n, c), np.float32),
            )
        w = windows if idx.size == n and isinstance(windows, np.ndarray) else windows[idx]
        err, share = reconstruction_error(
            w, self.autoencoder.reconstruct(w), self.threshold.statistic
        )
        p = self.threshold.p_anomaly(err)
        raw = err >= self.threshold.alert_threshold
        if idx.size == n:
            # Every window reached stage 2 (screen=False, or the daemon's single window).
            stage = np.full(n, STAGE_AUTOENCODER, np.int8)
            return WindowScores(stage, err.copy(), p, raw, err, share)
        stage = np.full(n, STAGE_SCREEN, np.int8)
        stage[idx] = STAGE_AUTOENCODER
        score = forest_score  # a fresh array from the forest: ours to overwrite
        score[idx] = err
        p_all = np.zeros(n, np.float64)
        p_all[idx] = p
        raw_all = np.zeros(n, np.bool_)
        raw_all[idx] = raw
        error = np.full(n, np.nan)
        error[idx] = err
        contributions = np.zeros((n, c), np.float32)
        contributions[idx] = share
        return WindowScores(stage, score, p_all, raw_all, error, contributions)

    def _score_finite_only(
        self,
        windows: F32 | WindowSource,
        features: F32,
        finite: npt.NDArray[np.bool_],
        *,
        screen: bool,
    ) -> WindowScores:
        """Score the finite windows; the others get :data:`STAGE_SKIPPED`, no score, no alert.

        Data quality keeps implausible readings out of windows, so this is the last guard: a
        window the int8 model cannot take must cost one window, not the agent.
        """
        n, _, c = windows.shape
        out = WindowScores(
            np.full(n, STAGE_SKIPPED, np.int8), np.zeros(n), np.zeros(n), np.zeros(n, np.bool_),
            np.full(n, np.nan), np.zeros((n, c), np.float32),
        )
        idx = np.flatnonzero(finite)
        if not idx.size:
            return out
        return out.with_part(idx, self.score(windows[idx], features[idx], screen=screen))
