"""The model's learned data-quality checks, applied to a recorded file as the gateway would.

``trainer fit`` learns two limits per channel from its history and writes them in the
manifest: ``stuck_after`` (:mod:`edge_agent.data.repeats`) and ``noisy_above``
(:mod:`edge_agent.data.roughness`). On the gateway, data quality
(:mod:`edge_agent.data.quality`) applies them to each sample; ``replay``, ``trainer evaluate``
and the benchmarks apply them here, to whole blocks of rows, with the same rules: a stuck
reading becomes missing, a noisy one is kept, and either marks its row ``sensor_fault``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edge_agent.data.repeats import NO_LIMIT, RepeatCounter
from edge_agent.data.roughness import NoiseMeter

F64 = npt.NDArray[np.float64]
BOOL = npt.NDArray[np.bool_]
# Rows judged per step: the checks make a few (rows x channels) temporaries each (the noise
# level's sorting network eight), so a replay block of ~100,000 rows is judged in slices to
# keep the peak memory where it was without them.
CHUNK_ROWS = 8192


class LearnedChecks:
    """Stuck and noisy readings of a stream of rows, block by block."""

    def __init__(
        self, stuck_after: Sequence[int | None], noisy_above: Sequence[float | None]
    ) -> None:
        if len(stuck_after) != len(noisy_above):
            raise ValueError(f"{len(stuck_after)} stuck limits for {len(noisy_above)} channels")
        n = len(stuck_after)
        self._stuck = np.array([NO_LIMIT if k is None else k for k in stuck_after], np.int64)
        self._noisy = np.array([np.inf if v is None else v for v in noisy_above], np.float64)
        self._repeats = RepeatCounter(n)
        self._noise = NoiseMeter(n)
        self.judges_stuck = bool((self._stuck != NO_LIMIT).any())
        self.judges_noise = bool(np.isfinite(self._noisy).any())

    def apply(self, values: F64) -> tuple[F64, BOOL]:
        """(N, C) readings -> (readings with stuck ones NaN, (N,) rows with a stuck or noisy
        channel)."""
        if values.shape[0] <= CHUNK_ROWS:
            return self._apply(values)
        chunks = [values[i : i + CHUNK_ROWS] for i in range(0, values.shape[0], CHUNK_ROWS)]
        parts = [self._apply(chunk) for chunk in chunks]
        rows = np.concatenate([p[1] for p in parts])
        if all(p[0] is chunk for p, chunk in zip(parts, chunks, strict=True)):
            return values, rows  # nothing stuck: the readings as they came
        return np.concatenate([p[0] for p in parts]), rows

    def _apply(self, values: F64) -> tuple[F64, BOOL]:
        rows = np.zeros(values.shape[0], np.bool_)
        clean = values
        if self.judges_stuck:
            stuck = self._repeats.push(values) >= self._stuck[None, :]
            if stuck.any():
                rows |= stuck.any(axis=1)
                clean = np.where(stuck, np.nan, values)
        if self.judges_noise:  # on the readings that passed: a stuck one has no noise level
            rows |= (self._noise.push(clean) > self._noisy[None, :]).any(axis=1)
        return clean, rows
