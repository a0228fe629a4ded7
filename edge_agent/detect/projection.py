"""Cross-channel consistency for the screen: residual and distance in the normal subspace.

Sits between normalization and the forest's window features. Summary features per channel
cannot see a broken relation between channels (a current normal for "loaded" while flow says
"unloaded"). A principal subspace of normal samples, fitted by the trainer, can: for each
sample ``x`` the squared prediction error ``SPE = |x - P Pᵀ x|²`` (off the subspace) and
Hotelling's ``T² = Σ (Pᵀ x)ᵢ² / λᵢ`` (far along it). The window features add their mean and
maximum over the window. This is the classic T²+Q monitor, used here as forest input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.kernels import jit, kernel

STAT_NAMES = ("spe_mean", "spe_max", "t2_mean", "t2_max")
# Eigenvalues below this (normalized units²) would turn T² into noise amplification.
MIN_VARIANCE = 1e-6


@dataclass(frozen=True)
class Projection:
    """Principal subspace of normal normalized samples: ``components`` (C, k), ``variances``."""

    components: npt.NDArray[np.float64]
    variances: npt.NDArray[np.float64]

    def sample_stats(self, xn: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``(m, 2)``: SPE and T² of every sample."""
        return sample_stats_kernel(np.ascontiguousarray(xn), self.components, self.variances)


@kernel("f4[:,:], f8[:,:], f8[:] -> f4[:,:]")
def sample_stats_kernel(
    xn: npt.NDArray[np.float32],
    components: npt.NDArray[np.float64],
    variances: npt.NDArray[np.float64],
) -> npt.NDArray[np.float32]:  # pragma: no cover - compiled
    """SPE and T² of each sample ``(m, C)`` against ``components`` (C, k): ``(m, 2)``.

    Public so that fused kernels (``pipeline._front``) can call it from compiled code.
    """
    m, c = xn.shape
    k = components.shape[1]
    out = np.empty((m, 2), np.float32)
    z = np.empty(k, np.float64)
    for i in range(m):
        t2 = 0.0
        for a in range(k):
            s = 0.0
            for j in range(c):
                s += components[j, a] * xn[i, j]
            z[a] = s
            t2 += s * s / variances[a]
        spe = 0.0
        for j in range(c):
            r = np.float64(xn[i, j])
            for a in range(k):
                r -= components[j, a] * z[a]
            spe += r * r
        out[i, 0] = spe
        out[i, 1] = t2
    return out


# The former private name, still imported by edge_agent.pipeline.
_sample_stats = sample_stats_kernel


@jit
def window_stat_features(
    stats: npt.NDArray[np.float32], ends: npt.NDArray[np.int64], window: int
) -> npt.NDArray[np.float32]:  # pragma: no cover - compiled
    """Mean and max of each per-sample statistic over each window: ``(n, 2 * S)``."""
    s = stats.shape[1]
    out = np.empty((ends.shape[0], 2 * s), np.float32)
    for w in range(ends.shape[0]):
        k = ends[w]
        for a in range(s):
            total = 0.0
            hi = -np.inf
            for t in range(k - window + 1, k + 1):
                v = np.float64(stats[t, a])
                total += v
                hi = max(hi, v)
            out[w, 2 * a] = total / window
            out[w, 2 * a + 1] = hi
    return out


def fit_projection(samples: npt.NDArray[np.float32], *, explained: float = 0.9) -> Projection:
    """Smallest principal subspace explaining ``explained`` of the variance (at most C - 1)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need (n >= 2, C) samples to fit a projection, got {x.shape}")
    cov = x.T @ x / x.shape[0]
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals, vecs = np.maximum(vals[order], MIN_VARIANCE), vecs[:, order]
    share = np.cumsum(vals) / vals.sum()
    k = int(np.searchsorted(share, explained) + 1)
    k = max(1, min(k, x.shape[1] - 1)) if x.shape[1] > 1 else 1
    return Projection(np.ascontiguousarray(vecs[:, :k]), np.ascontiguousarray(vals[:k]))
