"""Robust aggregation rules: coordinate-wise trimmed mean and median.

Position: the alternative to ``aggregate.MeanAggregator`` in ``trainer federate`` when the
fleet may hold faulty or malicious gateways. Each coordinate of the result is the median (or
the mean after dropping the ``trim_fraction`` largest and smallest values) of that coordinate
over the round's updates, so one gateway sending a scaled, sign-flipped or random delta moves
the result by at most one order statistic instead of its whole (weighted) value.

Not streaming by nature: an order statistic needs every value of a coordinate, so the
aggregator keeps all K updates, O(K x P) float32 (10,000 gateways x 60,000 parameters =
2.4 GB). The result is computed over blocks of coordinates so the working copy stays
O(K x block). Several aggregator processes still combine (``merge`` concatenates their
updates), but only one of them can compute the result. Both rules are unweighted: sample counts
are a client's own claim, and weighting by them would hand a liar the influence the rule takes
away.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from trainer.federate.aggregate import Aggregator, check_update

# Coordinates per block when computing order statistics: K x 4096 float32 per sort.
COORDINATE_BLOCK = 4096


class BufferedAggregator:
    """Keeps every update; the result is their coordinate-wise median or trimmed mean."""

    def __init__(
        self,
        size: int,
        rule: Literal["trimmed_mean", "median"],
        *,
        trim_fraction: float = 0.0,
    ) -> None:
        if size < 1:
            raise ValueError(f"parameter count must be >= 1, got {size}")
        if not 0.0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
        self.size = size
        self.rule = rule
        self.trim_fraction = trim_fraction
        self.count = 0
        self.samples = 0
        self._rows: list[npt.NDArray[np.float32]] = []

    def add(self, update: npt.NDArray[np.float32], samples: int) -> None:
        check_update(update, self.size, samples)
        self._rows.append(np.array(update, dtype=np.float32, copy=True))
        self.count += 1
        self.samples += samples

    def merge(self, other: Aggregator) -> None:
        if not isinstance(other, BufferedAggregator) or other.rule != self.rule:
            raise ValueError(f"cannot merge a {type(other).__name__} into a {self.rule} aggregator")
        if other.size != self.size or other.trim_fraction != self.trim_fraction:
            raise ValueError("cannot merge aggregators of another size or trim fraction")
        self._rows.extend(other._rows)
        self.count += other.count
        self.samples += other.samples

    @property
    def trimmed(self) -> int:
        """Updates dropped at each end of every coordinate (0 for the median rule)."""
        if self.rule != "trimmed_mean":
            return 0
        return int(np.floor(self.trim_fraction * self.count))

    def result(self) -> npt.NDArray[np.float32]:
        if self.count == 0:
            raise ValueError("no update was aggregated")
        out = np.empty(self.size, np.float32)
        k = self.trimmed
        for lo in range(0, self.size, COORDINATE_BLOCK):
            hi = min(lo + COORDINATE_BLOCK, self.size)
            block = np.stack([r[lo:hi] for r in self._rows]).astype(np.float64)
            if self.rule == "median":
                out[lo:hi] = np.median(block, axis=0)
            else:
                block.sort(axis=0)
                out[lo:hi] = block[k : self.count - k].mean(axis=0)
        return out
