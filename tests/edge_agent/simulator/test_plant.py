"""Tests for the plant simulator: determinism, ground truth, physics and fault visibility.

The simulator feeds every demo, test and benchmark of the trainer, and later the Modbus
simulation, so these tests pin what those rely on: identical output for a seed, labels that
match the injected episodes, a compressor that behaves like one, and faults that really change
the signal exactly where they are labelled.
"""

from __future__ import annotations

import csv
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from edge_agent.simulator import (
    CHANNELS,
    FAULT_KINDS,
    UNITS,
    FaultEpisode,
    PlantStream,
    SimulatedPlant,
    simulate_plant,
)
from edge_agent.simulator.plant import (
    CORRELATED_NOISE_SD,
    FAULT_SCALE,
    LOAD_PRESSURE_BAR,
    RATED_FLOW_M3MIN,
    UNLOAD_PRESSURE_BAR,
    WHITE_NOISE_SD,
)

SEED = 7
ROWS = 20_000
START_2026 = 1_767_225_600.0

PRESSURE = CHANNELS.index("pressure_bar")
CURRENT = CHANNELS.index("motor_current_a")
OIL = CHANNELS.index("oil_temp_c")
FLOW = CHANNELS.index("flow_m3min")


@pytest.fixture(scope="module")
def plant() -> SimulatedPlant:
    return simulate_plant(rows=ROWS, seed=SEED)


@pytest.fixture(scope="module")
def clean() -> SimulatedPlant:
    return simulate_plant(rows=ROWS, seed=SEED, anomaly_fraction=0.0)


@pytest.fixture(scope="module")
def day() -> SimulatedPlant:
    """A whole day at 10 s, fault-free, to see the shift pattern and idle stops."""
    return simulate_plant(rows=8_640, period_s=10.0, seed=1, anomaly_fraction=0.0)


def _loaded(plant: SimulatedPlant) -> np.ndarray:
    # Delivered flow is the clearest sign of the loaded state: near rated flow or near zero.
    return plant.values[:, FLOW] > RATED_FLOW_M3MIN / 2


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_is_bit_identical() -> None:
    first = simulate_plant(rows=3_000, seed=3)
    second = simulate_plant(rows=3_000, seed=3)
    for name in ("timestamps", "values", "labels", "fault_kind"):
        assert getattr(first, name).tobytes() == getattr(second, name).tobytes(), name
    assert first.episodes == second.episodes


def test_different_seeds_differ() -> None:
    first = simulate_plant(rows=3_000, seed=3)
    second = simulate_plant(rows=3_000, seed=4)
    assert not np.array_equal(first.values, second.values)
    assert first.episodes != second.episodes


# --- shapes and ground truth ------------------------------------------------------------------


def test_shapes_dtypes_and_metadata(plant: SimulatedPlant) -> None:
    assert plant.timestamps.dtype == np.float64
    assert plant.timestamps.shape == (ROWS,)
    assert plant.values.dtype == np.float64
    assert plant.values.shape == (ROWS, len(CHANNELS))
    assert plant.labels.dtype == np.int8
    assert plant.labels.shape == (ROWS,)
    assert plant.fault_kind.dtype == np.int8
    assert plant.fault_kind.shape == (ROWS,)
    assert np.all(np.isfinite(plant.values))
    assert plant.channels == CHANNELS
    assert CHANNELS == (
        "pressure_bar",
        "motor_current_a",
        "oil_temp_c",
        "flow_m3min",
        "vibration_rms_mms",
    )
    assert plant.units == UNITS
    assert len(UNITS) == len(CHANNELS)
    assert plant.period_s == 1.0
    assert plant.timestamps[0] == START_2026
    steps = np.diff(plant.timestamps)
    assert np.all(steps > 0)
    np.testing.assert_allclose(steps, 1.0, atol=1e-6)
    # The arrays are shared with whoever reads the plant; nobody may edit them in place.
    with pytest.raises(ValueError, match="read-only"):
        plant.values[0, 0] = 0.0


def test_timestamps_follow_period_and_start() -> None:
    plant = simulate_plant(rows=500, period_s=0.25, start_time=1_000.0, anomaly_fraction=0.0)
    np.testing.assert_allclose(plant.timestamps, 1_000.0 + 0.25 * np.arange(500))


@pytest.mark.parametrize(
    ("rows", "fraction", "seed"),
    [(5_000, 0.04, 0), (5_000, 0.04, 1), (5_000, 0.1, 2), (20_000, 0.02, 3), (20_000, 0.04, 4)],
)
def test_anomaly_fraction_near_target(rows: int, fraction: float, seed: int) -> None:
    plant = simulate_plant(rows=rows, seed=seed, anomaly_fraction=fraction)
    assert abs(plant.labels.mean() - fraction) <= 0.01


def test_every_kind_present_on_a_long_run(plant: SimulatedPlant) -> None:
    assert {episode.kind for episode in plant.episodes} == set(FAULT_KINDS)
    codes = set(np.unique(plant.fault_kind).tolist())
    assert codes == set(range(len(FAULT_KINDS) + 1))


def test_only_requested_kinds_are_injected() -> None:
    plant = simulate_plant(rows=5_000, seed=2, fault_kinds=("stuck", "spike"))
    assert {episode.kind for episode in plant.episodes} == {"stuck", "spike"}


def test_no_faults_in_warmup(plant: SimulatedPlant) -> None:
    warmup = math.ceil(0.2 * ROWS)
    assert not plant.labels[:warmup].any()
    assert min(episode.start for episode in plant.episodes) >= warmup
    longer = simulate_plant(rows=5_000, seed=1, warmup_fraction=0.5)
    assert not longer.labels[:2_500].any()
    assert longer.labels.any()


def test_labels_match_episodes(plant: SimulatedPlant) -> None:
    labels = np.zeros(ROWS, dtype=np.int8)
    kinds = np.zeros(ROWS, dtype=np.int8)
    previous_stop = 0
    for episode in sorted(plant.episodes, key=lambda e: e.start):
        assert isinstance(episode, FaultEpisode)
        assert episode.kind in FAULT_KINDS
        assert episode.channel in CHANNELS
        assert 0 <= episode.start < episode.stop <= ROWS
        # Not overlapping and not touching, so every episode stays a distinct event.
        assert episode.start > previous_stop
        previous_stop = episode.stop
        labels[episode.start : episode.stop] = 1
        kinds[episode.start : episode.stop] = FAULT_KINDS.index(episode.kind) + 1
    np.testing.assert_array_equal(plant.labels, labels)
    np.testing.assert_array_equal(plant.fault_kind, kinds)
    np.testing.assert_array_equal(plant.labels, (plant.fault_kind > 0).astype(np.int8))


def test_zero_fraction_means_no_faults(clean: SimulatedPlant) -> None:
    assert clean.episodes == ()
    assert not clean.labels.any()
    assert not clean.fault_kind.any()


# --- physics of the normal process ------------------------------------------------------------


def test_loaded_and_unloaded_states_are_distinct(clean: SimulatedPlant) -> None:
    values = clean.values
    loaded = _loaded(clean)
    assert 0.1 < loaded.mean() < 0.9
    assert np.corrcoef(values[:, CURRENT], values[:, FLOW])[0, 1] > 0.9
    assert values[loaded, CURRENT].mean() > values[~loaded, CURRENT].mean() + 30.0


def test_oil_temperature_lags_the_load(day: SimulatedPlant) -> None:
    # A slow first-order lag follows the duty cycle of the last quarter hour, not the
    # instantaneous load/unload state.
    loaded = _loaded(day).astype(np.float64)
    window = int(900.0 / day.period_s)
    duty = np.convolve(loaded, np.ones(window) / window)[: day.rows]
    oil = day.values[window:, OIL]
    with_duty = np.corrcoef(oil, duty[window:])[0, 1]
    with_state = np.corrcoef(oil, loaded[window:])[0, 1]
    assert with_duty > 0.6
    assert with_duty > with_state + 0.3


def test_pressure_cycles_between_setpoints(clean: SimulatedPlant) -> None:
    pressure = clean.values[:, PRESSURE]
    loaded = _loaded(clean)
    unloads = np.flatnonzero(loaded[:-1] & ~loaded[1:]) + 1
    reloads = np.flatnonzero(~loaded[:-1] & loaded[1:]) + 1
    assert len(unloads) > 50
    assert len(reloads) > 50
    # Hysteresis: the machine unloads at the upper setpoint and loads again at the lower one.
    assert abs(np.median(pressure[unloads]) - UNLOAD_PRESSURE_BAR) < 0.1
    assert abs(np.median(pressure[reloads]) - LOAD_PRESSURE_BAR) < 0.1
    assert pressure.min() > LOAD_PRESSURE_BAR - 0.3
    assert pressure.max() < UNLOAD_PRESSURE_BAR + 0.3


def test_demand_pattern_changes_duty_cycle_and_idle_stops_the_motor(day: SimulatedPlant) -> None:
    hour = (day.timestamps % 86_400.0) / 3_600.0
    loaded = _loaded(day)
    night = (hour >= 1.0) & (hour < 5.0)
    morning = (hour >= 7.0) & (hour < 11.0)
    assert loaded[morning].mean() > loaded[night].mean() + 0.1
    stopped = day.values[:, CURRENT] < 5.0
    assert stopped.any()
    assert day.values[stopped, FLOW].max() < 0.5


# --- faults -----------------------------------------------------------------------------------


def test_faults_leave_the_normal_process_untouched(
    plant: SimulatedPlant, clean: SimulatedPlant
) -> None:
    np.testing.assert_array_equal(plant.timestamps, clean.timestamps)
    untouched = np.ones_like(plant.values, dtype=bool)
    for episode in plant.episodes:
        untouched[episode.start : episode.stop, CHANNELS.index(episode.channel)] = False
    np.testing.assert_array_equal(plant.values[untouched], clean.values[untouched])


def test_every_fault_changes_its_signal(plant: SimulatedPlant, clean: SimulatedPlant) -> None:
    _check_fault_effects(plant, clean)


def test_every_fault_changes_its_signal_other_seed() -> None:
    faulty = simulate_plant(rows=8_000, seed=11, period_s=5.0)
    clean = simulate_plant(rows=8_000, seed=11, period_s=5.0, anomaly_fraction=0.0)
    _check_fault_effects(faulty, clean)


def _check_fault_effects(faulty: SimulatedPlant, clean: SimulatedPlant) -> None:
    """Each episode visibly changes its channel, in the way its kind says it should."""
    assert faulty.episodes
    clean_range = (clean.values.min(axis=0), clean.values.max(axis=0))
    for episode in faulty.episodes:
        c = CHANNELS.index(episode.channel)
        span = slice(episode.start, episode.stop)
        bad = faulty.values[span, c]
        good = clean.values[span, c]
        delta = bad - good
        noise = WHITE_NOISE_SD[c]
        scale = FAULT_SCALE[c]
        if episode.kind != "stuck":
            assert np.abs(delta).max() > 3 * noise, episode
        if episode.kind == "drift":
            growth = np.diff(np.abs(delta))
            assert np.all(growth > -1e-9), episode
            assert abs(delta[-1]) >= 1.5 * scale - 1e-9, episode
        elif episode.kind == "spike":
            assert np.all(np.abs(delta) >= 3 * scale - 1e-9), episode
        elif episode.kind == "level_shift":
            assert np.ptp(delta) < 1e-9, episode
            assert abs(delta[0]) >= 1.5 * scale - 1e-9, episode
        elif episode.kind == "stuck":
            # A flat line where the real reading moves on every sample.
            assert np.ptp(bad) == 0.0, episode
            assert bad[0] == faulty.values[episode.start - 1, c], episode
            assert np.all(np.diff(good) != 0.0), episode
            assert episode.channel != "oil_temp_c"
        elif episode.kind == "noise_burst":
            # Extra noise of at least sqrt(8) times the normal noise (some cut at the floor).
            normal_sd = math.hypot(WHITE_NOISE_SD[c], CORRELATED_NOISE_SD[c])
            assert np.std(delta) > 1.5 * normal_sd, episode
        elif episode.kind == "contextual":
            # Wrong for the current operating mode on every sample...
            assert np.all(np.abs(delta) > 5 * noise), episode
            # ...yet within what the channel shows in normal operation.
            low, high = clean_range[0][c], clean_range[1][c]
            margin = 5 * noise
            assert np.all((bad > low - margin) & (bad < high + margin)), episode


def test_faults_do_not_go_below_physical_floor(plant: SimulatedPlant) -> None:
    for name in ("pressure_bar", "motor_current_a", "flow_m3min", "vibration_rms_mms"):
        assert plant.values[:, CHANNELS.index(name)].min() >= 0.0


# --- CSV ------------------------------------------------------------------------------------


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def test_csv_round_trip(plant: SimulatedPlant, tmp_path: Path) -> None:
    path = tmp_path / "plant.csv"
    path.write_text("stale content\n", encoding="utf-8")
    plant.write_csv(path)

    header, rows = _read_csv(path)
    assert header == ["timestamp", *CHANNELS, "anomaly", "fault_kind"]
    assert len(rows) == ROWS
    assert rows[0][0] == "2026-01-01T00:00:00Z"
    anomaly = np.array([int(row[-2]) for row in rows], dtype=np.int8)
    np.testing.assert_array_equal(anomaly, plant.labels)
    names = ("normal", *FAULT_KINDS)
    assert [row[-1] for row in rows] == [names[k] for k in plant.fault_kind.tolist()]
    values = np.array([[float(v) for v in row[1:-2]] for row in rows])
    np.testing.assert_allclose(values, plant.values, rtol=1e-5, atol=1e-9)
    stamps = [datetime.fromisoformat(row[0]).timestamp() for row in rows[:100]]
    np.testing.assert_allclose(stamps, plant.timestamps[:100])
    # Written through a temporary file that was moved into place: nothing else is left.
    assert [p.name for p in tmp_path.iterdir()] == ["plant.csv"]


def test_csv_uses_fractional_seconds_below_one_second(tmp_path: Path) -> None:
    plant = simulate_plant(rows=200, period_s=0.1, anomaly_fraction=0.0)
    path = tmp_path / "fast.csv"
    plant.write_csv(path)
    _, rows = _read_csv(path)
    assert rows[1][0] == "2026-01-01T00:00:00.100Z"
    parsed = datetime.fromisoformat(rows[-1][0])
    assert parsed.tzinfo == UTC
    assert parsed.timestamp() == pytest.approx(plant.timestamps[-1], abs=1e-6)


# --- streaming --------------------------------------------------------------------------------


def test_stream_replays_the_plant_and_continues_past_a_chunk() -> None:
    chunk = 300
    stream = PlantStream(chunk_rows=chunk, seed=5, period_s=2.0)
    first = simulate_plant(rows=chunk, seed=5, period_s=2.0)
    samples = [stream.next_sample() for _ in range(2 * chunk + 10)]
    stamps = np.array([t for t, _ in samples])
    values = np.array([v for _, v in samples])
    np.testing.assert_array_equal(stamps[:chunk], first.timestamps)
    np.testing.assert_array_equal(values[:chunk], first.values)
    np.testing.assert_allclose(np.diff(stamps), 2.0, atol=1e-6)
    second = simulate_plant(rows=chunk, seed=6, period_s=2.0, start_time=START_2026 + 2.0 * chunk)
    np.testing.assert_array_equal(values[chunk : 2 * chunk], second.values)
    assert stream.last_fault_kind in ("normal", *FAULT_KINDS)


# --- argument checks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows": 99}, "rows"),
        ({"period_s": 0.0}, "period_s"),
        ({"period_s": -1.0}, "period_s"),
        ({"period_s": math.nan}, "period_s"),
        ({"anomaly_fraction": -0.01}, "anomaly_fraction"),
        ({"anomaly_fraction": 0.5}, "anomaly_fraction"),
        ({"warmup_fraction": 1.0}, "warmup_fraction"),
        ({"seed": -1}, "seed"),
        ({"fault_kinds": ("drift", "gremlins")}, "unknown fault kind 'gremlins'.*drift"),
        ({"fault_kinds": "drift"}, "fault_kinds"),
        ({"fault_kinds": ()}, "fault_kinds"),
        ({"rows": 1_000, "anomaly_fraction": 0.45, "warmup_fraction": 0.6}, "do not fit"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        simulate_plant(**kwargs)  # type: ignore[arg-type]
