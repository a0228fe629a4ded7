"""Synthetic anomalies injected into held-out normal windows.

Histories are mostly unlabelled and normal (SKAB gives 400 normal rows per machine), yet the
cascade's screen threshold must be set so that the forest keeps 98 % of what stage 2 detects.
We measure that on copies of validation windows with typical faults injected: spikes, level
shifts, drifts, stuck sensors, noise bursts and a broken cross-channel relation. Labelled
anomalies, when the history has them, are used as well.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

KINDS = ("spike", "level_shift", "drift", "stuck", "noise_burst", "decorrelate")
# Magnitudes in units of the channel's normal standard deviation (windows are normalized).
SPIKE_SIGMA = 6.0
SHIFT_SIGMA = 3.0
DRIFT_SIGMA = 4.0
NOISE_SIGMA = 2.5


def inject(
    windows: npt.NDArray[np.float32], *, seed: int, copies: int = 1
) -> tuple[npt.NDArray[np.float32], list[str]]:
    """Return ``copies`` corrupted copies of each window and the fault kind of each."""
    rng = np.random.default_rng([seed, 7])
    n, w, c = windows.shape
    out = np.repeat(windows, copies, axis=0).copy()
    kinds: list[str] = []
    for i in range(out.shape[0]):
        kind = KINDS[i % len(KINDS)]
        kinds.append(kind)
        ch = int(rng.integers(c))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        # Faults start in the last half of the window: that is where a live detector sees them.
        start = int(rng.integers(w // 2, w - 1))
        x = out[i]
        if kind == "spike":
            x[start, ch] += sign * SPIKE_SIGMA
        elif kind == "level_shift":
            x[start:, ch] += sign * SHIFT_SIGMA
        elif kind == "drift":
            x[:, ch] += sign * np.linspace(0.0, DRIFT_SIGMA, w, dtype=np.float32)
        elif kind == "stuck":
            x[start:, ch] = x[start, ch]
            # A stuck sensor on a quiet channel is invisible; make it stuck off-centre too.
            x[start:, ch] += sign * 1.5
        elif kind == "noise_burst":
            x[start:, ch] += rng.normal(0.0, NOISE_SIGMA, size=w - start).astype(np.float32)
        else:  # decorrelate: one channel replaced by another window's copy of it
            other = int(rng.integers(n))
            x[:, ch] = windows[other, ::-1, ch] + sign * 1.0
    return out, kinds
