"""The two-stage cascade: forest screen, then the int8 autoencoder on what the screen flags.

One contract for every caller: given normalized windows and their features, return per window
the stage that decided, its score, ``p_anomaly``, the raw alert decision and, for stage-2
windows, the per-channel share of the reconstruction error (for attribution). ``replay``, the
daemon and the trainer's evaluation all call :meth:`Cascade.score`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.bundle.manifest import Manifest
from edge_agent.bundle.verify import VerifiedBundle
from edge_agent.detect.forest import FlatForest
from edge_agent.detect.threshold import ThresholdModel
from edge_agent.errors import BundleError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

STAGE_NONE = 0  # no complete window yet (warm-up, outage, too many imputed samples)
STAGE_SCREEN = 1  # the forest passed the window as normal
STAGE_AUTOENCODER = 2  # the autoencoder scored the window


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


def reconstruction_error(windows: F32, recon: F32) -> tuple[F64, F32]:
    """Mean squared error per window and each channel's share of it."""
    sq = np.square(windows.astype(np.float64) - recon.astype(np.float64))
    per_channel = sq.mean(axis=1)  # (n, C)
    err = per_channel.mean(axis=1)
    total = per_channel.sum(axis=1, keepdims=True)
    share = np.divide(per_channel, total, out=np.zeros_like(per_channel), where=total > 0)
    return err, share.astype(np.float32)


class Cascade:
    """Forest screen + autoencoder + calibrated threshold, as loaded from a bundle."""

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

    @classmethod
    def from_bundle(cls, bundle: VerifiedBundle, *, num_threads: int = 1) -> Cascade:
        # Imported here so that listing or verifying bundles works without an interpreter.
        from edge_agent.detect.autoencoder import Int8Autoencoder

        m: Manifest = bundle.manifest
        forest = FlatForest.from_bytes(bundle.files[m.forest.file], source=m.forest.file)
        ae = Int8Autoencoder(bundle.files[m.autoencoder.file], num_threads=num_threads)
        if ae.window != m.window.length or ae.channels != len(m.channels):
            raise BundleError(
                f"{m.autoencoder.file}: model input is ({ae.window}, {ae.channels}) but the "
                f"manifest says ({m.window.length}, {len(m.channels)})"
            )
        return cls(
            forest=forest,
            screen_threshold=m.forest.screen_threshold,
            autoencoder=ae,
            threshold=m.threshold,
        )

    def score(self, windows: F32, features: F32, *, screen: bool = True) -> WindowScores:
        """Score windows ``(n, W, C)`` with their features ``(n, F)``.

        ``screen=False`` sends every window to stage 2 (used to measure stage 2 alone).
        """
        n, _, c = windows.shape
        forest_score = self.forest.score(features)
        to_stage2 = forest_score >= self.screen_threshold if screen else np.ones(n, np.bool_)
        stage = np.where(to_stage2, STAGE_AUTOENCODER, STAGE_SCREEN).astype(np.int8)
        score = forest_score.copy()
        p = np.zeros(n, np.float64)
        error = np.full(n, np.nan)
        contributions = np.zeros((n, c), np.float32)
        idx = np.flatnonzero(to_stage2)
        if idx.size:
            w = np.ascontiguousarray(windows[idx])
            err, share = reconstruction_error(w, self.autoencoder.reconstruct(w))
            error[idx] = err
            score[idx] = err
            p[idx] = self.threshold.p_anomaly(err)
            contributions[idx] = share
        raw = np.zeros(n, np.bool_)
        raw[idx] = error[idx] >= self.threshold.alert_threshold
        return WindowScores(stage, score, p, raw, error, contributions)
