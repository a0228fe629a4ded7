"""The model's learned data-quality checks, applied to a recorded file as the gateway would.

``trainer fit`` learns four limits per channel from its history (:class:`LearnedLimits`) and
writes them in the manifest: ``stuck_after`` (:mod:`edge_agent.data.repeats`), ``noisy_above``
(:mod:`edge_agent.data.roughness`), ``jump_above`` (:mod:`edge_agent.data.jumps`) and
``spike_above`` (:mod:`edge_agent.data.spikes`). On the gateway, data quality
(:mod:`edge_agent.data.quality`) applies them to each sample; ``replay``, ``trainer evaluate``
and the benchmarks apply them here, to whole blocks of rows, with the same rules: a stuck
reading becomes missing, a noisy one, a jump or a spike is kept, and each marks its row
``sensor_fault``. A spike is known one reading late (its way back is what makes it one): the
last row of a block is marked, if it was one, by :attr:`LearnedChecks.late` after the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from edge_agent.data.jumps import JumpDetector, learned_jump_limits
from edge_agent.data.repeats import NO_LIMIT, RepeatCounter, learned_stuck_limits
from edge_agent.data.roughness import NoiseMeter, learned_noise_limits
from edge_agent.data.spikes import SpikeDetector, learned_spike_limits

F64 = npt.NDArray[np.float64]
BOOL = npt.NDArray[np.bool_]
# Rows judged per step: the checks make a few (rows x channels) temporaries each (the noise
# level's sorting network eight), so a replay block of ~100,000 rows is judged in slices to
# keep the peak memory where it was without them.
CHUNK_ROWS = 8192


@dataclass(frozen=True)
class LearnedLimits:
    """A model's learned data-quality limits, one entry per channel (None: not judged)."""

    stuck_after: tuple[int | None, ...]
    noisy_above: tuple[float | None, ...]
    jump_above: tuple[float | None, ...]
    spike_above: tuple[float | None, ...]

    def __post_init__(self) -> None:
        n = len(self.stuck_after)
        others = (self.noisy_above, self.jump_above, self.spike_above)
        if any(len(limits) != n for limits in others):
            raise ValueError(
                f"learned limits for different channel counts: {n} stuck, "
                f"{len(self.noisy_above)} noisy, {len(self.jump_above)} jump, "
                f"{len(self.spike_above)} spike"
            )

    @classmethod
    def none(cls, channels: int) -> LearnedLimits:
        """No learned limit on any of ``channels`` channels."""
        return cls(*((None,) * channels,) * 4)

    @classmethod
    def learn(cls, values: F64) -> LearnedLimits:
        """The limits of a training history's (N, C) readings, rows to ignore set to NaN."""
        return cls(
            tuple(learned_stuck_limits(values)),
            tuple(learned_noise_limits(values)),
            tuple(learned_jump_limits(values)),
            tuple(learned_spike_limits(values)),
        )


def limit_array(limits: Sequence[float | None]) -> F64:
    """Per-channel limits as an array, inf where a channel is not judged."""
    return np.array([np.inf if v is None else v for v in limits], np.float64)


class LearnedChecks:
    """Stuck, noisy, jumping and spiking readings of a stream of rows, block by block.

    ``late``: after :meth:`apply`, whether the previous call's last row was a spike (known only
    now); a caller that already reported that row as clean reports it again.
    """

    def __init__(self, limits: LearnedLimits) -> None:
        n = len(limits.stuck_after)
        self._stuck = np.array([NO_LIMIT if k is None else k for k in limits.stuck_after])
        self._noisy = limit_array(limits.noisy_above)
        jump_above = limit_array(limits.jump_above)
        spike_above = limit_array(limits.spike_above)
        self._repeats = RepeatCounter(n)
        self._noise = NoiseMeter(n)
        self._jumps = JumpDetector(jump_above)
        self._spikes = SpikeDetector(spike_above)
        self.judges_stuck = bool((self._stuck != NO_LIMIT).any())
        self.judges_noise = bool(np.isfinite(self._noisy).any())
        self.judges_jumps = bool(np.isfinite(jump_above).any())
        self.judges_spikes = bool(np.isfinite(spike_above).any())
        self.late = False

    def apply(self, values: F64) -> tuple[F64, BOOL]:
        """(N, C) readings -> (readings with stuck ones NaN, (N,) rows with a stuck, noisy,
        jumping or spiking channel; the last row's spike is known after the next call)."""
        if values.shape[0] <= CHUNK_ROWS:
            clean, rows, self.late = self._apply(values)
            return clean, rows
        chunks = [values[i : i + CHUNK_ROWS] for i in range(0, values.shape[0], CHUNK_ROWS)]
        parts = [self._apply(chunk) for chunk in chunks]
        self.late = parts[0][2]
        for before, after in pairwise(parts):
            before[1][-1] |= after[2]  # a spike on a slice's last row, seen in the next
        rows = np.concatenate([p[1] for p in parts])
        if all(p[0] is chunk for p, chunk in zip(parts, chunks, strict=True)):
            return values, rows  # nothing stuck: the readings as they came
        return np.concatenate([p[0] for p in parts]), rows

    def _apply(self, values: F64) -> tuple[F64, BOOL, bool]:
        rows = np.zeros(values.shape[0], np.bool_)
        late = False
        clean = values
        if self.judges_stuck:
            stuck = self._repeats.push(values) >= self._stuck[None, :]
            if stuck.any():
                rows |= stuck.any(axis=1)
                clean = np.where(stuck, np.nan, values)
        # On the readings that passed: a stuck one has no noise level and makes no step.
        if self.judges_noise:
            rows |= (self._noise.push(clean) > self._noisy[None, :]).any(axis=1)
        if self.judges_jumps:
            rows |= self._jumps.push(clean).any(axis=1)
        if self.judges_spikes:
            spikes, before = self._spikes.push(clean)
            rows |= spikes.any(axis=1)
            late = bool(before.any())
        return clean, rows, late
