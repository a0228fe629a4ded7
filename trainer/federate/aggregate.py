"""Aggregation of client updates into one mean update: the streaming FedAvg rule.

Position: ``trainer federate`` verifies each gateway's delta (``collect``), clips it
(``clip``), then adds it here; the result goes to the server optimizer (``server_opt``) and on
to the new run (``run_out``). ``MeanAggregator`` keeps running sums only (the sample-weighted
sum of updates in float64 and the total weight), so its memory is O(P) whatever the number of
gateways, and two partial aggregators combine exactly with ``merge``: several aggregator
processes (for instance the members of an MQTT v5 shared subscription) can each sum a share of
a large fleet and hand their partial sums (``to_bytes``) to one process that merges them.

The robust rules (coordinate-wise trimmed mean and median) need every update at once and live
in ``robust``; ``rules.make_aggregator`` picks the rule from the settings.
"""

from __future__ import annotations

import io
from typing import Protocol

import numpy as np
import numpy.typing as npt


def check_update(update: npt.NDArray[np.float32], size: int, samples: int) -> None:
    """Refuse an update that is not a finite float32 vector of ``size`` or has no samples."""
    if update.ndim != 1 or update.shape[0] != size:
        raise ValueError(f"update has shape {update.shape}, expected ({size},)")
    if update.dtype != np.float32:
        raise ValueError(f"update dtype is {update.dtype}, expected float32")
    if samples < 1:
        raise ValueError(f"an update must come from at least 1 sample, got {samples}")
    if not np.all(np.isfinite(update)):
        raise ValueError("update holds NaN or infinite values")


class Aggregator(Protocol):
    """One aggregation rule: add updates one by one, merge partial aggregators, read the result."""

    size: int
    count: int
    samples: int

    def add(self, update: npt.NDArray[np.float32], samples: int) -> None: ...

    def merge(self, other: Aggregator) -> None: ...

    def result(self) -> npt.NDArray[np.float32]: ...


class MeanAggregator:
    """FedAvg: the mean of updates weighted by their sample counts, from running sums."""

    rule = "fedavg"

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"parameter count must be >= 1, got {size}")
        self.size = size
        self.count = 0
        self.samples = 0
        # float64 so a sum over 10,000 gateways loses nothing a float32 mean would keep.
        self._sum = np.zeros(size, np.float64)

    def add(self, update: npt.NDArray[np.float32], samples: int) -> None:
        check_update(update, self.size, samples)
        self._sum += update.astype(np.float64) * samples
        self.count += 1
        self.samples += samples

    def merge(self, other: Aggregator) -> None:
        if not isinstance(other, MeanAggregator):
            raise ValueError(f"cannot merge a {type(other).__name__} into a fedavg aggregator")
        if other.size != self.size:
            raise ValueError(f"cannot merge {other.size} parameters into {self.size}")
        self._sum += other._sum
        self.count += other.count
        self.samples += other.samples

    def result(self) -> npt.NDArray[np.float32]:
        if self.samples == 0:
            raise ValueError("no update was aggregated")
        return (self._sum / self.samples).astype(np.float32)

    def to_bytes(self) -> bytes:
        """The partial sums as an npz, for another process to ``merge`` (``from_bytes``)."""
        buf = io.BytesIO()
        np.savez(buf, sum=self._sum, count=np.int64(self.count), samples=np.int64(self.samples))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> MeanAggregator:
        """Partial sums written by ``to_bytes``; ValueError when they are not."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                total, count, samples = z["sum"], int(z["count"]), int(z["samples"])
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"not an aggregator's partial sums: {exc}") from None
        if total.ndim != 1 or total.dtype != np.float64 or count < 0 or samples < 0:
            raise ValueError("partial sums: expected a float64 vector and counts >= 0")
        agg = cls(int(total.shape[0]))
        agg._sum = total.copy()
        agg.count, agg.samples = count, samples
        return agg
