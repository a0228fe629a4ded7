"""Labelled fault injection for the plant simulator.

Pipeline position: :mod:`edge_agent.simulator.plant` produces the normal process of a screw
compressor; this module plans non-overlapping fault episodes and writes them into a copy of
those signals, together with per-row labels. The labelled result is what the demo, the tests
and the benchmarks feed to the trainer as CSV, and what ``edge_agent simulate`` later serves
over Modbus, so the ground truth here is what every detector gets scored against.

This module knows nothing about compressors: the plant describes each channel with a
:class:`ChannelFaultSpec` (how large a fault on it should be, its noise, its physical floor,
which fault kinds make sense on it), which keeps the dependency one-way (plant -> faults).

Faults are drawn from their own random stream, so the same seed gives the same normal process
with or without faults; the tests rely on that to check that every fault changes the signal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FAULT_KINDS: tuple[str, ...] = (
    "drift",
    "spike",
    "level_shift",
    "stuck",
    "noise_burst",
    "contextual",
)

# Episode lengths are in samples, not seconds: detectors see windows of samples, so a fault
# has to span a comparable number of them whatever the sampling period.
EPISODE_LENGTH_SAMPLES: dict[str, tuple[int, int]] = {
    # Slow enough to look like a leak or a sensor ageing, long enough to end up obvious.
    "drift": (100, 300),
    # A glitch: one to a few consecutive samples.
    "spike": (1, 5),
    "level_shift": (30, 120),
    "stuck": (30, 120),
    "noise_burst": (20, 60),
    # Wrong-mode values over tens of samples: clearly more than a glitch, shorter than a shift.
    "contextual": (20, 60),
}

# Normal samples kept between two episodes, so that a detector's window can settle and two
# episodes are never read as one. Shrunk automatically when the space after warm-up is tight.
MIN_GAP_SAMPLES = 60

# Fault sizes in units of the channel's ChannelFaultSpec.scale (a typical operating-range
# deviation). Chosen so that faults stand well clear of the noise without leaving the range
# a real transmitter could report.
DRIFT_END_SCALES = (1.5, 2.5)
SPIKE_SCALES = (3.0, 5.0)
LEVEL_SHIFT_SCALES = (1.5, 2.5)
# Standard deviation of the whole signal noise is multiplied by this during a burst, so the
# variance goes up 9 to 25 times.
NOISE_BURST_FACTOR = (3.0, 5.0)


@dataclass(frozen=True)
class FaultEpisode:
    """One injected fault: ``kind`` on ``channel`` for rows ``start`` (inclusive) to ``stop``."""

    kind: str
    start: int
    stop: int
    channel: str

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ChannelFaultSpec:
    """How faults on one channel look; supplied by the plant model.

    ``scale`` is a typical operating deviation in the channel's unit, ``noise_sd`` the total
    normal noise standard deviation, ``floor`` the lowest value the transmitter can report,
    ``drift_sign`` the physically plausible direction of a slow drift (e.g. a leak lowers
    pressure, fouling raises temperature), ``kinds`` the fault kinds that make sense on it.
    """

    name: str
    scale: float
    noise_sd: float
    floor: float
    drift_sign: float
    kinds: frozenset[str]


@dataclass(frozen=True)
class InjectedFaults:
    """Faulty signals plus ground truth, as returned by :func:`inject_faults`."""

    values: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int8]
    fault_kind: npt.NDArray[np.int8]
    episodes: tuple[FaultEpisode, ...]


def check_fault_kinds(fault_kinds: Sequence[str]) -> tuple[str, ...]:
    """Return the requested kinds without duplicates, or raise ValueError naming the known ones."""
    if isinstance(fault_kinds, str):
        raise ValueError(
            f"fault_kinds must be a sequence of kind names, not the string {fault_kinds!r}; "
            f"known kinds: {', '.join(FAULT_KINDS)}"
        )
    kinds: list[str] = []
    for kind in fault_kinds:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known kinds: {', '.join(FAULT_KINDS)}")
        if kind not in kinds:
            kinds.append(kind)
    return tuple(kinds)


def plan_episodes(
    *,
    rows: int,
    first_row: int,
    target_points: int,
    kinds: Sequence[str],
    specs: Sequence[ChannelFaultSpec],
    rng: np.random.Generator,
) -> tuple[FaultEpisode, ...]:
    """Place non-overlapping episodes in ``[first_row, rows)`` covering exactly ``target_points``.

    Every kind gets at least one episode when the budget allows it, so a long enough run always
    exercises all of them; the rest of the budget goes round robin over the kinds. Episodes are
    kept ``MIN_GAP_SAMPLES`` apart, less only when the faulty rows leave no room for it.
    """
    if target_points <= 0 or not kinds:
        return ()
    available = rows - first_row
    if target_points > available:
        raise ValueError(
            f"{target_points} anomalous rows do not fit in the {available} rows after warm-up; "
            "lower anomaly_fraction or warmup_fraction"
        )

    lengths = _draw_lengths(target_points, tuple(kinds), rng)
    order = rng.permutation(len(lengths))
    planned = [lengths[i] for i in order]

    n = len(planned)
    free = available - target_points
    min_gap = min(MIN_GAP_SAMPLES, free // max(n - 1, 1))
    slack = free - (n - 1) * min_gap
    cuts = np.sort(rng.integers(0, slack + 1, size=n))
    extra_gaps = np.diff(np.concatenate(([0], cuts)))

    episodes: list[FaultEpisode] = []
    position = first_row
    for index, (kind, length) in enumerate(planned):
        position += int(extra_gaps[index]) + (min_gap if index > 0 else 0)
        channel = _pick_channel(kind, specs, rng)
        episodes.append(FaultEpisode(kind, position, position + length, channel))
        position += length
    return tuple(episodes)


def _draw_lengths(
    target_points: int, kinds: tuple[str, ...], rng: np.random.Generator
) -> list[tuple[str, int]]:
    first_pass = [kinds[i] for i in rng.permutation(len(kinds))]
    shortest = min(EPISODE_LENGTH_SAMPLES[k][0] for k in kinds)
    remaining = target_points
    lengths: list[tuple[str, int]] = []
    counts = dict.fromkeys(kinds, 0)
    while remaining > 0:
        step = len(lengths)
        if step < len(first_pass):
            kind = first_pass[step]
            # Leave room for the minimum length of every kind still waiting for its first turn.
            reserved = sum(EPISODE_LENGTH_SAMPLES[k][0] for k in first_pass[step + 1 :])
            cap = remaining - reserved
            if cap < 1:
                cap = max(1, remaining // (len(first_pass) - step))
        else:
            fitting = [k for k in kinds if EPISODE_LENGTH_SAMPLES[k][0] <= remaining]
            if not fitting:
                # Too little budget left for any kind: lengthen the last episode instead, so
                # the achieved fraction stays exact.
                last_kind, last_length = lengths[-1]
                lengths[-1] = (last_kind, last_length + remaining)
                break
            # Round robin over the kinds (ties broken at random) keeps the episode counts even,
            # so a run has several episodes of every kind rather than many of a lucky one.
            fewest = min(counts[k] for k in fitting)
            behind = [k for k in fitting if counts[k] == fewest]
            kind = behind[int(rng.integers(len(behind)))]
            cap = remaining
        low, high = EPISODE_LENGTH_SAMPLES[kind]
        length = min(int(rng.integers(low, high + 1)), cap)
        leftover = remaining - length
        if step >= len(first_pass) - 1 and 0 < leftover < shortest:
            length += leftover
        lengths.append((kind, length))
        counts[kind] += 1
        remaining -= length
    return lengths


def _pick_channel(kind: str, specs: Sequence[ChannelFaultSpec], rng: np.random.Generator) -> str:
    candidates = [spec.name for spec in specs if kind in spec.kinds]
    if not candidates:
        raise ValueError(f"no channel accepts fault kind {kind!r}")
    return candidates[int(rng.integers(len(candidates)))]


def inject_faults(
    values: npt.NDArray[np.float64],
    counterfactual: npt.NDArray[np.float64],
    episodes: Sequence[FaultEpisode],
    specs: Sequence[ChannelFaultSpec],
    rng: np.random.Generator,
) -> InjectedFaults:
    """Apply ``episodes`` to a copy of ``values`` and build the per-row labels.

    ``counterfactual`` holds, per row and channel, what the channel would read if the machine
    were in the opposite operating mode (loaded vs. not loaded) with the same noise; contextual
    faults copy from it, so their values are plausible in isolation and wrong only in context.
    """
    rows = values.shape[0]
    faulty = values.copy()
    labels = np.zeros(rows, dtype=np.int8)
    fault_kind = np.zeros(rows, dtype=np.int8)
    column = {spec.name: index for index, spec in enumerate(specs)}

    for episode in episodes:
        c = column[episode.channel]
        spec = specs[c]
        s, e = episode.start, episode.stop
        segment = faulty[s:e, c]
        if episode.kind == "drift":
            end_offset = spec.drift_sign * spec.scale * rng.uniform(*DRIFT_END_SCALES)
            ramp = np.arange(1, e - s + 1, dtype=np.float64) / (e - s)
            segment = _keep_above_floor(segment, end_offset * ramp, spec.floor)
        elif episode.kind == "spike":
            size = spec.scale * rng.uniform(*SPIKE_SCALES, size=e - s)
            signs = rng.choice(np.array([-1.0, 1.0]), size=e - s)
            offsets = np.where(segment - size < spec.floor, size, signs * size)
            segment = segment + offsets
        elif episode.kind == "level_shift":
            shift = spec.scale * rng.uniform(*LEVEL_SHIFT_SCALES) * rng.choice([-1.0, 1.0])
            segment = _keep_above_floor(segment, np.full(e - s, shift), spec.floor)
        elif episode.kind == "stuck":
            frozen = faulty[s - 1, c] if s > 0 else faulty[s, c]
            segment = np.full(e - s, frozen)
        elif episode.kind == "noise_burst":
            factor = rng.uniform(*NOISE_BURST_FACTOR)
            extra_sd = spec.noise_sd * math.sqrt(factor**2 - 1.0)
            noisy = segment + rng.normal(0.0, extra_sd, size=e - s)
            # Reflected rather than clipped at the floor: near zero (a stopped machine) clipping
            # would flatten half of the burst.
            segment = spec.floor + np.abs(noisy - spec.floor)
        elif episode.kind == "contextual":
            segment = counterfactual[s:e, c].copy()
        else:  # pragma: no cover - kinds are validated before planning
            raise ValueError(f"unknown fault kind {episode.kind!r}")
        faulty[s:e, c] = segment
        labels[s:e] = 1
        fault_kind[s:e] = FAULT_KINDS.index(episode.kind) + 1

    return InjectedFaults(faulty, labels, fault_kind, tuple(episodes))


def _keep_above_floor(
    segment: npt.NDArray[np.float64], offsets: npt.NDArray[np.float64], floor: float
) -> npt.NDArray[np.float64]:
    # A downward fault that would push the reading below what the transmitter can report is
    # turned upward instead: clipping it would flatten the fault and hide it.
    if np.any(segment + offsets < floor):
        offsets = np.abs(offsets)
    return segment + offsets
