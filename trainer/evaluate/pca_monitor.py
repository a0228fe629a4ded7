"""PCA T²/SPE monitor: the classic process-monitoring detector, as a baseline in the report.

Part of the trainer's evaluation step, next to :mod:`trainer.evaluate.baselines`: where those
judge window features, this one judges sensor samples as a plant's multivariate statistical
process control does. It is fitted on standardised normal training rows (the samples of the
run's representative training windows) and scores the newest sample of each scored window.

- Components: the fewest whose cumulative explained variance reaches ``EXPLAINED_VARIANCE``
  (90 %, the low end of the usual 90-95 %: with the 4-10 channels of a gateway, 95 % often
  keeps all but one component and leaves SPE almost nothing to watch), at least one and at
  most ``C - 1`` so the residual space exists.
- Hotelling's T² on the retained scores (each divided by its component's variance) watches
  moves *along* the normal correlation structure, e.g. a mean shift of correlated channels;
  SPE (Q), the squared residual off the retained subspace, watches moves that *break* it,
  e.g. two channels that always move together parting ways while each stays in range.
- Limits: empirical quantiles of the training rows' own T² and SPE at ``LIMIT_QUANTILE``
  (99.5 % each, so that "either exceeds" alarms on about 1 % of normal rows, the rate of
  the other baselines' 99 % quantile). Not the F-distribution and Jackson-Mudholkar limits:
  they assume independent Gaussian samples, and sensor rows are autocorrelated and rarely
  Gaussian (drifting temperatures, switching operating modes), where those limits alarm far
  above their nominal rate. The training statistics are in-sample (PCA saw those rows), which
  with many more rows than channels lowers them only slightly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sklearn.decomposition import PCA

F64 = npt.NDArray[np.float64]
#: Cumulative explained variance the retained components must reach.
EXPLAINED_VARIANCE = 0.90
#: Quantile of the training rows' T² and SPE taken as each statistic's limit.
LIMIT_QUANTILE = 0.995
#: Standard deviations below this are treated as constant columns (divide by 1 instead).
MIN_STD = 1e-12
#: Component variances and limits are floored here (a degenerate direction must not divide by 0).
MIN_VARIANCE = 1e-12


@dataclass(frozen=True)
class PcaMonitor:
    """A fitted T²/SPE monitor: standardisation, retained components and the two limits."""

    mean: F64
    std: F64
    components: F64  # (k, C) orthonormal rows
    variances: F64  # (k,) variance of each retained score
    explained: float  # share of the standardised variance the k components carry
    t2_limit: float
    spe_limit: float

    def statistics(self, rows: npt.ArrayLike) -> tuple[F64, F64]:
        """(T², SPE) of each row of ``rows`` ``(n, C)``."""
        z = (_matrix(rows, "rows", self.mean.size) - self.mean) / self.std
        scores = z @ self.components.T
        t2 = np.sum(scores**2 / self.variances, axis=1)
        residual = z - scores @ self.components
        return t2, np.sum(residual**2, axis=1)

    def score(self, rows: npt.ArrayLike) -> tuple[F64, npt.NDArray[np.bool_]]:
        """(score, alarm): the score is the larger of T² and SPE over its limit, so it ranks
        rows continuously with high = anomalous; the alarm is either statistic over its limit."""
        t2, spe = self.statistics(rows)
        score = np.maximum(t2 / self.t2_limit, spe / self.spe_limit)
        return score, (t2 > self.t2_limit) | (spe > self.spe_limit)

    def summary(self) -> dict[str, float | int]:
        """What the report's JSON records of the fit."""
        return {
            "components": int(self.components.shape[0]),
            "channels": int(self.mean.size),
            "explained_variance": self.explained,
            "t2_limit": self.t2_limit,
            "spe_limit": self.spe_limit,
            "limit_quantile": LIMIT_QUANTILE,
        }


def _matrix(values: npt.ArrayLike, name: str, columns: int | None = None) -> F64:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (rows, channels) matrix, got shape {x.shape}")
    if columns is not None and x.shape[1] != columns:
        raise ValueError(f"{name} has {x.shape[1]} channels, the monitor was fitted on {columns}")
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"{name} has a NaN or infinite value (row {bad[0]}, channel {bad[1]})")
    return x


def fit_pca_monitor(rows: npt.ArrayLike) -> PcaMonitor:
    """Fit the monitor on normal training ``rows`` ``(n, C)``; ValueError on unusable input."""
    x = _matrix(rows, "training rows")
    n, c = x.shape
    if n <= c:
        raise ValueError(f"need more training rows than channels ({c}), got {n}")
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std < MIN_STD] = 1.0
    z = (x - mean) / std
    pca = PCA(svd_solver="full").fit(z)
    cumulative = np.cumsum(pca.explained_variance_ratio_)
    k = int(np.searchsorted(cumulative, EXPLAINED_VARIANCE - 1e-12) + 1)
    k = max(1, min(k, c - 1)) if c > 1 else 1
    components = pca.components_[:k]
    variances = np.maximum(pca.explained_variance_[:k], MIN_VARIANCE)
    fitted = PcaMonitor(mean, std, components, variances, float(cumulative[k - 1]), 1.0, 1.0)
    t2, spe = fitted.statistics(x)
    return PcaMonitor(
        mean=mean,
        std=std,
        components=components,
        variances=variances,
        explained=float(cumulative[k - 1]),
        # Floored: training rows that never move (or one channel: no residual) give limit 0.
        t2_limit=max(float(np.quantile(t2, LIMIT_QUANTILE)), MIN_VARIANCE),
        spe_limit=max(float(np.quantile(spe, LIMIT_QUANTILE)), MIN_VARIANCE),
    )
