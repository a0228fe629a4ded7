"""The demo's fault schedule: every fault kind in turn, the first within a minute of serving.

Pipeline position: ``edge_agent simulate --demo`` serves :class:`DemoStream` instead of the
randomly planned :class:`~edge_agent.simulator.plant.PlantStream`. A random plan keeps its
first fault behind a warm-up of minutes and may leave a kind out of a short run, which is
right for training history and benchmarks but shows a newcomer nothing for minutes. Here the
plan is fixed: a normal lead-in long enough for the agent's window (32 samples) to fill with
normal data, then each kind of :data:`~edge_agent.simulator.faults.FAULT_KINDS` once per
cycle, with a normal stretch after each, cycling forever.

Only where and how long faults are is chosen here. The normal process is the plant's own, and
every fault is made by the simulator's own injector
(:func:`~edge_agent.simulator.faults.inject_faults`) with its usual random magnitudes, so the
demo shows faults of the size the benchmarks and the trainer's replay table are measured on.
Each episode lasts a length from the kind's own range
(:data:`~edge_agent.simulator.faults.EPISODE_LENGTH_SAMPLES`), picked near its long end so that
it can be watched.
"""

from __future__ import annotations

import numpy as np

from edge_agent.simulator.faults import FaultEpisode, _pick_channel
from edge_agent.simulator.plant import (
    FAULT_SPECS,
    PlantStream,
    SimulatedPlant,
    faulty_plant,
    simulate_normal_process,
)

# Order of the kinds in a cycle: the most reliably detected first (bench/results/simulator.json:
# level shift 4/4 episodes caught, contextual 5/5), then the others so that the short ones fit
# in a ten-minute demo before the slow drift closes the cycle.
DEMO_KIND_ORDER: tuple[str, ...] = (
    "level_shift",
    "contextual",
    "stuck",
    "noise_burst",
    "spike",
    "drift",
)
# Samples each episode lasts, inside each kind's EPISODE_LENGTH_SAMPLES range.
DEMO_EPISODE_SAMPLES: dict[str, int] = {
    "level_shift": 90,
    "contextual": 60,  # the longest contextual fault the simulator makes
    "stuck": 60,
    "noise_burst": 45,
    "spike": 5,  # the longest spike the simulator makes
    "drift": 120,  # a drift needs time to ramp; the simulator's shortest is 100
}
# Normal samples before the first fault: the agent's 32-sample window fills with normal data
# first, with some seconds to spare for the agent starting after the simulator.
DEMO_LEAD_IN_SAMPLES = 45
# Normal samples after each episode: the window empties of the fault and the episode closes.
DEMO_GAP_SAMPLES = 60
# The opening fault is on vibration, where two demo-sized models (12 h of history; dense and
# default autoencoder) caught the simulator's level shift (1.5 to 2.5 times the 0.8 mm/s
# operating scale) 24 times of 24, 6 to 43 s after its start, replaying the demo for seeds 0
# to 7 and 20 cycles of seed 0. As the opener, a pressure shift took up to 77 s, a motor
# current shift was missed 8 times of 16, and an oil temperature shift, though plain on a
# plot, was caught 0 times of 8 (the models weigh that slow channel's level little). Later
# faults get a channel drawn among those that accept their kind, as the random plan does.
DEMO_OPENING_CHANNEL = "vibration_rms_mms"
# Cycles generated at once: about a day of samples at 1 s. Each chunk is a fresh run of the
# normal process (as PlantStream's chunks are), so a longer chunk means fewer restarts.
DEMO_CYCLES_PER_CHUNK = 116
# The fault random stream of a demo chunk is [seed, _DEMO_STREAM, chunk], apart from the
# plant's own [seed, 1].
_DEMO_STREAM = 2


def demo_cycle_samples() -> int:
    """Samples in one cycle of the schedule: every kind once, each followed by a gap."""
    return sum(DEMO_EPISODE_SAMPLES[k] + DEMO_GAP_SAMPLES for k in DEMO_KIND_ORDER)


def plan_demo(cycles: int, rng: np.random.Generator) -> tuple[FaultEpisode, ...]:
    """The episodes of ``cycles`` cycles from sample 0: the first starts after the lead-in and
    is a level shift on :data:`DEMO_OPENING_CHANNEL`; the others' channels come from ``rng``."""
    episodes: list[FaultEpisode] = []
    position = DEMO_LEAD_IN_SAMPLES
    for _ in range(cycles):
        for kind in DEMO_KIND_ORDER:
            opening = not episodes
            channel = DEMO_OPENING_CHANNEL if opening else _pick_channel(kind, FAULT_SPECS, rng)
            length = DEMO_EPISODE_SAMPLES[kind]
            episodes.append(FaultEpisode(kind, position, position + length, channel))
            position += length + DEMO_GAP_SAMPLES
    return tuple(episodes)


def simulate_demo(
    *, cycles: int, period_s: float, seed: int, start_time: float, stream: int = 0
) -> SimulatedPlant:
    """``cycles`` cycles of the demo schedule on the plant's normal process for ``seed``.

    ``stream`` tells consecutive chunks of one demo apart: their fault channels and magnitudes
    are drawn from different random streams.
    """
    rows = cycles * demo_cycle_samples()
    process = simulate_normal_process(
        rows=rows, period_s=period_s, seed=seed, start_time=start_time
    )
    rng = np.random.default_rng([seed, _DEMO_STREAM, stream])
    return faulty_plant(process, plan_demo(cycles, rng), rng, period_s)


class DemoStream(PlantStream):
    """The demo schedule served one row at a time, forever (see :class:`PlantStream`).

    Chunk ``i`` is :func:`simulate_demo` for seed ``seed + i``; every chunk is a whole number
    of cycles, so each one again opens with the lead-in and the level shift.
    """

    def __init__(self, *, period_s: float = 1.0, seed: int = 0) -> None:
        # The plant's default start time: the demo model's history starts there too, so the
        # served shift pattern of air demand is one it was trained on.
        super().__init__(
            chunk_rows=DEMO_CYCLES_PER_CHUNK * demo_cycle_samples(), period_s=period_s, seed=seed
        )

    def _generate(self, chunk: int) -> SimulatedPlant:
        return simulate_demo(
            cycles=DEMO_CYCLES_PER_CHUNK,
            period_s=self._period_s,
            seed=self._seed + chunk,
            start_time=self._start_time + chunk * self._chunk_rows * self._period_s,
            stream=chunk,
        )
