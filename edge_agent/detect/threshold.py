"""Turning stage-2 reconstruction error into a calibrated probability and an alert decision.

Sits after the autoencoder. The trainer calibrates on held-out normal windows (see
``trainer.calibrate``); the bundle stores the result and the gateway evaluates it here with
numpy only.

Two methods share one evaluation:

* ``percentile``: the alert threshold is a high percentile of normal errors; the tail
  probability comes from the empirical distribution (a table of quantiles).
* ``pot``: peaks over threshold. Errors above a high quantile ``u`` of normal errors are fitted
  with a generalized Pareto distribution, so ``P(E >= e | normal)`` is known far beyond the
  largest error ever seen in calibration, and the alert threshold is the error whose tail
  probability equals the configured risk.

``p_anomaly = 1 - P(E >= e | normal)``: high means anomalous (0.999 = an error this large
happens to a normal window once in a thousand). The tail probability itself is
``1 - p_anomaly``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

F64 = npt.NDArray[np.float64]
# Below this |xi| the GPD is treated as its exponential limit, avoiding 0/0.
XI_EXPONENTIAL_LIMIT = 1e-6


class PotTail(BaseModel):
    """Generalized Pareto fit of normal errors above ``u``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    u: float = Field(description="Tail start: a high quantile of normal errors")
    sigma: float = Field(gt=0, description="GPD scale")
    xi: float = Field(description="GPD shape (0 = exponential tail)")
    tail_fraction: float = Field(gt=0, le=1, description="Share of normal errors above u")


class ThresholdModel(BaseModel):
    """Calibrated threshold of stage-2 error, as stored in the bundle manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    method: Literal["percentile", "pot"]
    alert_threshold: float = Field(gt=0, description="Error at or above which a window alerts")
    quantile_levels: list[float] = Field(description="Levels of the empirical quantile table")
    quantile_values: list[float] = Field(description="Normal errors at those levels")
    pot: PotTail | None = None

    def tail_probability(self, errors: F64) -> F64:
        """``P(E >= e | normal)`` for each error ``e``."""
        e = np.asarray(errors, dtype=np.float64)
        levels = np.asarray(self.quantile_levels)
        values = np.asarray(self.quantile_values)
        # Empirical survival below the last table value; interp is monotone in e.
        surv = 1.0 - np.interp(e, values, levels, left=0.0, right=levels[-1])
        tail = self.pot
        if tail is not None:
            above = e >= tail.u
            z = np.maximum(e[above] - tail.u, 0.0) / tail.sigma
            if abs(tail.xi) < XI_EXPONENTIAL_LIMIT:
                s = np.exp(-z)
            else:
                base = np.maximum(1.0 + tail.xi * z, 0.0)
                with np.errstate(divide="ignore"):
                    s = np.where(base > 0, base ** (-1.0 / tail.xi), 0.0)
            surv[above] = tail.tail_fraction * s
        else:
            # Beyond the largest calibration error the empirical tail is unknown; decay it
            # smoothly so probabilities stay ordered instead of flat.
            top = values[-1]
            beyond = e > top
            if beyond.any():
                spread = max(float(values[-1] - values[0]), 1e-12)
                surv[beyond] = (1.0 - levels[-1]) * np.exp(-(e[beyond] - top) / spread)
        out: F64 = np.clip(surv, 0.0, 1.0)
        return out

    def p_anomaly(self, errors: F64) -> F64:
        return 1.0 - self.tail_probability(errors)
