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

The evaluation is one Numba kernel over the errors, with the table held as arrays: the daemon
asks for one error at a time, where a dozen numpy calls would cost far more than the math. It
repeats numpy's formulas step for step (``np.interp`` included), so batch and streaming give
the same bits.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from edge_agent.config.strict import StrictModel
from edge_agent.kernels import CALL, bind, jit, kernel

F64 = npt.NDArray[np.float64]
# Below this |xi| the GPD is treated as its exponential limit, avoiding 0/0.
XI_EXPONENTIAL_LIMIT = 1e-6
# Floor of the spread that scales the decay beyond the last table value (error units).
MIN_SPREAD = 1e-12


class _Table:
    """The quantile table as float64 arrays and the tail's parameters, as the kernel takes them.

    Cached in the model's ``__dict__`` (pydantic supports ``cached_property``), where
    pydantic's ``==`` may compare it: tables are equal when their arrays are (a bare array
    there would raise). ``model_copy(update=...)`` copies the cache along, so the model checks
    that its fields are still the objects the table was made from.
    """

    __slots__ = ("levels", "pot_args", "sources", "tail", "values")

    def __init__(self, levels: list[float], values: list[float], pot: PotTail | None) -> None:
        if not levels or len(levels) != len(values):
            # np.interp refused these too; the kernel would read past the arrays instead.
            raise ValueError(
                f"quantile table needs levels and values of one non-zero length, "
                f"got {len(levels)} and {len(values)}"
            )
        self.sources = (levels, values, pot)
        self.levels: F64 = np.array(levels, np.float64)
        self.values: F64 = np.array(values, np.float64)
        # has_pot, u, sigma, xi, tail_fraction (placeholders without a tail)
        self.pot_args: tuple[bool, float, float, float, float] = (
            (False, 0.0, 1.0, 0.0, 1.0)
            if pot is None
            else (True, pot.u, pot.sigma, pot.xi, pot.tail_fraction)
        )
        # The kernel with this table checked once; indexed by ``complement``.
        self.tail = tuple(
            bind(_tail_kernel, CALL, self.levels, self.values, *self.pot_args, complement)
            for complement in (False, True)
        )

    def made_from(self, levels: list[float], values: list[float], pot: PotTail | None) -> bool:
        src = self.sources
        return src[0] is levels and src[1] is values and src[2] is pot

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Table)
            and np.array_equal(self.levels, other.levels)
            and np.array_equal(self.values, other.values)
            and self.pot_args == other.pot_args
        )

    __hash__ = None  # type: ignore[assignment]


class PotTail(StrictModel):
    """Generalized Pareto fit of normal errors above ``u``."""

    u: float = Field(description="Tail start: a high quantile of normal errors")
    sigma: float = Field(gt=0, description="GPD scale")
    xi: float = Field(description="GPD shape (0 = exponential tail)")
    tail_fraction: float = Field(gt=0, le=1, description="Share of normal errors above u")


#: What one number per window summarises its reconstruction error by
#: (:func:`edge_agent.detect.cascade.reconstruction_error`): the mean squared error over all its
#: samples and channels, or the largest of its channels' mean squared errors.
ErrorStatistic = Literal["mean", "channel_max"]


class ThresholdModel(StrictModel):
    """Calibrated threshold of stage-2 error, as stored in the bundle manifest."""

    method: Literal["percentile", "pot"]
    statistic: ErrorStatistic = Field(
        default="mean",
        description="The window error the threshold and table are in: mean (over samples and "
        "channels) or channel_max (the worst channel's mean over samples)",
    )
    alert_threshold: float = Field(gt=0, description="Error at or above which a window alerts")
    quantile_levels: list[float] = Field(description="Levels of the empirical quantile table")
    quantile_values: list[float] = Field(description="Normal errors at those levels")
    pot: PotTail | None = None

    @cached_property
    def _table(self) -> _Table:
        return _Table(self.quantile_levels, self.quantile_values, self.pot)

    def _evaluate(self, errors: F64, *, complement: bool) -> F64:
        t = self._table
        if not t.made_from(self.quantile_levels, self.quantile_values, self.pot):
            del self.__dict__["_table"]  # copied by model_copy(update=...) from another model
            t = self._table
        e = np.asarray(errors, dtype=np.float64)
        # The compiled kernel takes a contiguous 1-d array; other shapes are flattened and restored.
        flat = np.ascontiguousarray(e).reshape(-1)
        out: F64 = t.tail[complement](flat)
        return out if e.ndim == 1 else out.reshape(e.shape)

    def scaled(self, factor: float) -> ThresholdModel:
        """This calibration for errors ``factor`` times as large: threshold, table and tail
        scale (a GPD's location and scale scale with its variable, its shape does not)."""
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"scale factor must be a positive number, got {factor!r}")
        pot = self.pot
        return self.model_copy(
            update={
                "alert_threshold": self.alert_threshold * factor,
                "quantile_values": [v * factor for v in self.quantile_values],
                "pot": None
                if pot is None
                else pot.model_copy(update={"u": pot.u * factor, "sigma": pot.sigma * factor}),
            }
        )

    def tail_probability(self, errors: F64) -> F64:
        """``P(E >= e | normal)`` for each error ``e``."""
        return self._evaluate(errors, complement=False)

    def p_anomaly(self, errors: F64) -> F64:
        """``1 - P(E >= e | normal)`` for each error ``e``."""
        return self._evaluate(errors, complement=True)


@jit
def _interp(x: float, xp: F64, fp: F64, left: float, right: float) -> float:  # pragma: no cover
    """``np.interp`` for one point, branch for branch (numpy's ``arr_interp``)."""
    n = xp.shape[0]
    if n == 1:
        return left if x < xp[0] else (right if x > xp[0] else fp[0])
    if math.isnan(x):
        return x
    if x > xp[n - 1]:
        return right
    if x < xp[0]:
        return left
    # numpy's search returns the last j with xp[j] <= x (ties go to the last equal entry).
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if x >= xp[mid]:
            lo = mid + 1
        else:
            hi = mid
    j = lo - 1
    if j == n - 1 or xp[j] == x:
        return float(fp[j])
    slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j])
    y = slope * (x - xp[j]) + fp[j]
    if math.isnan(y):
        # numpy tries the other end of the interval, then a flat segment's value.
        y = slope * (x - xp[j + 1]) + fp[j + 1]
        if math.isnan(y) and fp[j] == fp[j + 1]:
            y = fp[j]
    return float(y)


@kernel("f8[:], f8[:], f8[:], b1, f8, f8, f8, f8, b1 -> f8[:]")
def _tail_kernel(
    e: F64,
    levels: F64,
    values: F64,
    has_pot: bool,
    u: float,
    sigma: float,
    xi: float,
    tail_fraction: float,
    complement: bool,
) -> F64:  # pragma: no cover - compiled
    """``P(E >= e | normal)``, or ``1 -`` that with ``complement``: numpy's formulas per error."""
    out = np.empty(e.shape[0], np.float64)
    top = values[-1]
    spread = max(values[-1] - values[0], MIN_SPREAD)
    exponential = abs(xi) < XI_EXPONENTIAL_LIMIT
    power = -1.0 / xi if not exponential else 0.0
    for i in range(e.shape[0]):
        x = e[i]
        # Empirical survival below the last table value; interp is monotone in e.
        s = 1.0 - _interp(x, values, levels, 0.0, levels[-1])
        if has_pot:
            if x >= u:
                z = max(x - u, 0.0) / sigma
                if exponential:
                    s = tail_fraction * np.exp(-z)
                else:
                    base = max(1.0 + xi * z, 0.0)
                    s = tail_fraction * (base**power if base > 0 else 0.0)
        elif x > top:
            # Beyond the largest calibration error the empirical tail is unknown; decay it
            # smoothly so probabilities stay ordered instead of flat.
            s = (1.0 - levels[-1]) * np.exp(-(x - top) / spread)
        # np.clip's order: NaN stays NaN.
        s = 0.0 if s < 0.0 else (1.0 if s > 1.0 else s)
        out[i] = 1.0 - s if complement else s
    return out
