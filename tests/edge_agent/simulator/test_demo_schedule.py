"""The demo fault schedule: a fault within the first minute, every kind each cycle, normal
stretches between, the simulator's own fault sizes, the same stream for the same seed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_agent.simulator import CHANNELS, FAULT_KINDS, PlantStream, SimulatedPlant
from edge_agent.simulator.demo import (
    DEMO_CYCLES_PER_CHUNK,
    DEMO_GAP_SAMPLES,
    DEMO_OPENING_CHANNEL,
    DemoStream,
    demo_cycle_samples,
    simulate_demo,
)
from edge_agent.simulator.faults import (
    EPISODE_LENGTH_SAMPLES,
    LEVEL_SHIFT_SCALES,
)
from edge_agent.simulator.plant import FAULT_SPECS, simulate_normal_process

START = 1_767_225_600.0
WINDOW_SAMPLES = 32  # the agent's window: it should hold normal data before the first fault
FIRST_MINUTE_SAMPLES = 60  # at the demo's 1 sample/s
CYCLES = 3


@pytest.fixture(scope="module")
def demo() -> SimulatedPlant:
    return simulate_demo(cycles=CYCLES, period_s=1.0, seed=5, start_time=START)


def test_the_first_fault_is_a_level_shift_within_the_first_minute(demo: SimulatedPlant) -> None:
    first = demo.episodes[0]
    assert WINDOW_SAMPLES < first.start < FIRST_MINUTE_SAMPLES
    assert (first.kind, first.channel) == ("level_shift", DEMO_OPENING_CHANNEL)
    assert not demo.labels[: first.start].any()


def test_every_kind_once_per_cycle_with_normal_stretches_between(demo: SimulatedPlant) -> None:
    episodes = demo.episodes
    labels = demo.labels
    cycle = demo_cycle_samples()
    assert len(episodes) == CYCLES * len(FAULT_KINDS)
    for c in range(CYCLES):
        in_cycle = episodes[c * len(FAULT_KINDS) : (c + 1) * len(FAULT_KINDS)]
        assert sorted(e.kind for e in in_cycle) == sorted(FAULT_KINDS)
        # Every cycle has the same order and places, one cycle length apart.
        assert [e.kind for e in in_cycle] == [e.kind for e in episodes[: len(FAULT_KINDS)]]
        assert [e.start - c * cycle for e in in_cycle] == [
            e.start for e in episodes[: len(FAULT_KINDS)]
        ]
    for before, after in itertools.pairwise(episodes):
        assert after.start - before.stop == DEMO_GAP_SAMPLES
        assert not labels[before.stop : after.start].any()
    for e in episodes:
        low, high = EPISODE_LENGTH_SAMPLES[e.kind]
        assert low <= e.length <= high, e  # a length the simulator itself makes
        assert e.kind in next(s.kinds for s in FAULT_SPECS if s.name == e.channel), e
        assert labels[e.start : e.stop].all()
        assert (demo.fault_kind[e.start : e.stop] == FAULT_KINDS.index(e.kind) + 1).all()
    # Watchable: all but the glitch-like kinds last most of a minute or more.
    assert all(e.length >= 45 for e in episodes if e.kind not in ("spike", "noise_burst"))


def test_faults_are_the_simulators_own_on_the_plants_normal_process(demo: SimulatedPlant) -> None:
    values = demo.values
    normal = simulate_normal_process(rows=values.shape[0], period_s=1.0, seed=5, start_time=START)
    faulty = np.zeros(values.shape, dtype=bool)
    for e in demo.episodes:
        c = CHANNELS.index(e.channel)
        faulty[e.start : e.stop, c] = True
        changed = values[e.start : e.stop, c] != normal.values[e.start : e.stop, c]
        assert changed.mean() > 0.9, e  # the fault really changes its channel
        if e.kind == "level_shift":
            shift = np.abs(values[e.start : e.stop, c] - normal.values[e.start : e.stop, c])
            scale = FAULT_SPECS[c].scale
            assert np.allclose(shift, shift[0])
            assert LEVEL_SHIFT_SCALES[0] * scale <= shift[0] <= LEVEL_SHIFT_SCALES[1] * scale
    # Everything else is exactly the normal process of the seed.
    np.testing.assert_array_equal(values[~faulty], normal.values[~faulty])


def test_the_same_seed_serves_the_same_rows_and_another_seed_does_not() -> None:
    a, b, other = DemoStream(seed=3), DemoStream(seed=3), DemoStream(seed=4)
    rows_a = np.array([a.next_sample()[1] for _ in range(demo_cycle_samples())])
    rows_b = np.array([b.next_sample()[1] for _ in range(demo_cycle_samples())])
    rows_other = np.array([other.next_sample()[1] for _ in range(demo_cycle_samples())])
    np.testing.assert_array_equal(rows_a, rows_b)
    assert a.plant.episodes == b.plant.episodes
    assert not np.array_equal(rows_a, rows_other)
    # The schedule's places and kinds do not depend on the seed; channels after the first may.
    assert [(e.kind, e.start) for e in a.plant.episodes] == [
        (e.kind, e.start) for e in other.plant.episodes
    ]


def test_the_stream_tells_the_episode_of_each_row_and_goes_on_past_its_chunk() -> None:
    stream = DemoStream(seed=2)
    chunk_rows = DEMO_CYCLES_PER_CHUNK * demo_cycle_samples()
    first_chunk = stream.plant
    for row in range(chunk_rows):
        stream.next_sample()
        episode = stream.last_episode
        assert stream.last_row == row
        if first_chunk.fault_kind[row]:
            assert episode is not None
            assert episode.start <= row < episode.stop
            assert stream.last_fault_kind == episode.kind
        else:
            assert episode is None
            assert stream.last_fault_kind == "normal"
    # The next chunk again opens with the lead-in and the level shift, on new values.
    for _ in range(first_chunk.episodes[0].start + 1):
        stream.next_sample()
    assert stream.plant is not first_chunk
    assert stream.last_episode == first_chunk.episodes[0]
    assert stream.plant.timestamps[0] == first_chunk.timestamps[-1] + 1.0
    assert not np.array_equal(stream.plant.values[:100], first_chunk.values[:100])


def test_the_random_plan_stream_tells_its_episodes_too() -> None:
    stream = PlantStream(chunk_rows=3600, warmup_fraction=0.05, anomaly_fraction=0.08, seed=1)
    seen = []
    for _ in range(3600):
        stream.next_sample()
        episode = stream.last_episode
        assert (episode is None) == (stream.last_fault_kind == "normal")
        if episode is not None and stream.last_row == episode.start:
            seen.append(episode)
    assert tuple(seen) == stream.plant.episodes
