"""Tests for machine profiles: the reference machine is unchanged, and each field moves what it
says it moves (the fleet-learning benchmark's non-IID fleet rests on both).

The references below were recorded with the simulator as it was before profiles existed (the
parent of commit 66ac3fb, numpy 2.4): the default profile must reproduce every seed. Labels,
fault kinds and episodes are compared bit for bit; the values by their column sums and sums of
squares to 1e-10, because numpy's SIMD paths differ in the last bit between CPUs (AVX-512 and
AVX2 hosts gave different digests of the same, pre-profile, values).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from edge_agent.simulator import (
    CHANNELS,
    DEFAULT_PROFILE,
    FAULT_KINDS,
    MachineProfile,
    PlantStream,
    SimulatedPlant,
    simulate_plant,
)
from edge_agent.simulator.plant import (
    AMBIENT_MEAN_C,
    MODE_LOADED,
    MODE_STOPPED,
    MODE_UNLOADED,
    UNLOAD_PRESSURE_BAR,
    NormalProcess,
    simulate_normal_process,
)

PRESSURE = CHANNELS.index("pressure_bar")
CURRENT = CHANNELS.index("motor_current_a")
OIL = CHANNELS.index("oil_temp_c")
VIBRATION = CHANNELS.index("vibration_rms_mms")
START = 1_767_225_600.0
ROWS = 8_000

# simulate_plant(**kwargs) from before profiles existed: the digest of its labels, fault kinds
# and episodes; then per column of (timestamp, *values), the sum and the sum of squares.
PRE_PROFILE = [
    (
        {"rows": 5000, "seed": 0},
        "376c3299aff958b85290d0e2467379c08d2134b1eb6c73d980f6cb5185a6ee7e",
        [8836140497500.0, 35102.0929609, 207135.751229, 332646.065595, 8877.91875022, 10222.71249],
        [1.56154757783e22, 246936.550656, 11816632.9925, 22385093.9856, 77263.0117826,
         24760.764785],
    ),
    (
        {"rows": 3000, "seed": 7, "period_s": 2.5},
        "ed97ea50e084cbd446138982e74de3cfb6290008b7b5ba6a1fb639b91a95747f",
        [5301688046250.0, 21008.7715214, 147125.532322, 207512.884652, 7278.29917464,
         7184.33199191],
        [9.36929871326e21, 147387.316782, 8715169.67793, 14359985.1413, 65198.5752969,
         18351.0475339],
    ),
    (
        {"rows": 4000, "seed": 21, "anomaly_fraction": 0.1},
        "878927b487ccc6342112265f42c178af9418e8cfece128bbf6d8cd5414e819f5",
        [7068910398000.0, 27949.7879702, 226455.762982, 290221.021847, 14735.9642715,
         10203.4049703],
        [1.24923735537e22, 195684.189665, 15481646.6857, 21057968.37, 138133.487268,
         27613.7353384],
    ),
]  # fmt: skip


def _digest(plant: SimulatedPlant) -> str:
    """The exact part: labels, fault kinds, episodes."""
    h = hashlib.sha256()
    for array in (plant.labels, plant.fault_kind):
        h.update(np.ascontiguousarray(array).tobytes())
    h.update(repr(plant.episodes).encode())
    return h.hexdigest()


def _assert_reproduces(plant: SimulatedPlant, digest: str, sums: list[float],
                       squares: list[float]) -> None:  # fmt: skip
    assert _digest(plant) == digest
    v = np.column_stack([plant.timestamps, plant.values])
    np.testing.assert_allclose(v.sum(axis=0), sums, rtol=1e-10)
    np.testing.assert_allclose((v * v).sum(axis=0), squares, rtol=1e-10)


def _process(profile: MachineProfile, seed: int = 3) -> NormalProcess:
    return simulate_normal_process(
        rows=ROWS, period_s=1.0, seed=seed, start_time=START, profile=profile
    )


@pytest.fixture(scope="module")
def reference() -> NormalProcess:
    return _process(DEFAULT_PROFILE)


@pytest.mark.parametrize(("kwargs", "digest", "sums", "squares"), PRE_PROFILE)
def test_default_profile_reproduces_every_seed(
    kwargs: dict[str, float], digest: str, sums: list[float], squares: list[float]
) -> None:
    _assert_reproduces(simulate_plant(**kwargs), digest, sums, squares)  # type: ignore[arg-type]
    default = simulate_plant(**kwargs, profile=MachineProfile())  # type: ignore[arg-type]
    _assert_reproduces(default, digest, sums, squares)


def test_default_profile_is_neutral() -> None:
    assert DEFAULT_PROFILE.is_default
    assert not MachineProfile(noise_scale=1.2).is_default


def test_ambient_offset_moves_only_the_oil_temperature(reference: NormalProcess) -> None:
    warm = _process(MachineProfile(ambient_offset_c=7.0))
    np.testing.assert_array_equal(warm.mode, reference.mode)
    others = [i for i in range(len(CHANNELS)) if i != OIL]
    np.testing.assert_array_equal(warm.values[:, others], reference.values[:, others])
    np.testing.assert_allclose(warm.values[:, OIL] - reference.values[:, OIL], 7.0, atol=1e-9)


def test_pressure_offset_moves_the_setpoints_and_the_current(reference: NormalProcess) -> None:
    high = _process(MachineProfile(pressure_offset_bar=0.8))
    shift = high.values[:, PRESSURE].mean() - reference.values[:, PRESSURE].mean()
    assert shift == pytest.approx(0.8, abs=0.1)
    # The controller unloads at the shifted setpoint, never much above it.
    assert high.values[:, PRESSURE].max() < UNLOAD_PRESSURE_BAR + 0.8 + 0.2
    assert high.values[:, PRESSURE].max() > UNLOAD_PRESSURE_BAR + 0.8 - 0.2
    loaded = high.mode == MODE_LOADED
    ref_loaded = reference.mode == MODE_LOADED
    # Compression work grows with discharge pressure: about 6 A per bar while loaded.
    gain = high.values[loaded, CURRENT].mean() - reference.values[ref_loaded, CURRENT].mean()
    assert gain == pytest.approx(6.0 * 0.8, abs=1.0)


def test_demand_scale_changes_the_duty_cycle(reference: NormalProcess) -> None:
    busy = _process(MachineProfile(demand_scale=1.3))
    quiet = _process(MachineProfile(demand_scale=0.7))
    loaded = [float(np.mean(p.mode == MODE_LOADED)) for p in (quiet, reference, busy)]
    assert loaded[0] < loaded[1] < loaded[2]
    assert busy.demand.mean() > reference.demand.mean() > quiet.demand.mean()


def test_noise_scale_multiplies_the_measurement_noise(reference: NormalProcess) -> None:
    # The readings are clean + scale * noise: equal steps in scale give equal steps in value
    # on channels that never reach their floor (pressure, oil), and the process is unchanged.
    double = _process(MachineProfile(noise_scale=2.0))
    triple = _process(MachineProfile(noise_scale=3.0))
    np.testing.assert_array_equal(double.mode, reference.mode)
    for channel in (PRESSURE, OIL):
        step_1 = double.values[:, channel] - reference.values[:, channel]
        step_2 = triple.values[:, channel] - double.values[:, channel]
        np.testing.assert_allclose(step_2, step_1, atol=1e-9)
        assert np.std(step_1) > 0


def test_wear_adds_current_and_vibration_while_running(reference: NormalProcess) -> None:
    worn = _process(MachineProfile(vibration_offset_mms=0.6, current_offset_a=3.0))
    np.testing.assert_array_equal(worn.mode, reference.mode)
    running = np.isin(reference.mode, (MODE_LOADED, MODE_UNLOADED))
    stopped = reference.mode == MODE_STOPPED
    assert running.any()
    assert stopped.any()
    diff = worn.values - reference.values
    np.testing.assert_allclose(diff[running, VIBRATION], 0.6, atol=1e-9)
    np.testing.assert_allclose(diff[running, CURRENT], 3.0, atol=1e-9)
    np.testing.assert_array_equal(diff[stopped][:, [CURRENT, VIBRATION]], 0.0)
    np.testing.assert_array_equal(diff[:, [PRESSURE, OIL]], 0.0)


def test_a_profiled_machine_still_gets_every_fault_kind() -> None:
    profile = MachineProfile(
        pressure_offset_bar=-0.4,
        ambient_offset_c=-6.0,
        demand_scale=0.8,
        noise_scale=1.5,
        vibration_offset_mms=0.3,
        current_offset_a=2.0,
    )
    plant = simulate_plant(rows=20_000, seed=4, profile=profile)
    assert {e.kind for e in plant.episodes} == set(FAULT_KINDS)
    assert plant.anomaly_fraction == pytest.approx(0.04, abs=0.005)
    normal = plant.labels == 0
    assert plant.values[normal, OIL].mean() < AMBIENT_MEAN_C + 60.0 - 6.0


def test_stream_passes_the_profile_on() -> None:
    profile = MachineProfile(ambient_offset_c=5.0)
    stream = PlantStream(chunk_rows=500, seed=2, profile=profile)
    expected = simulate_plant(rows=500, seed=2, profile=profile)
    first = np.array([stream.next_sample()[1] for _ in range(500)])
    np.testing.assert_array_equal(first, expected.values)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pressure_offset_bar": 3.0}, "pressure_offset_bar must be in"),
        ({"ambient_offset_c": math.nan}, "ambient_offset_c must be finite"),
        ({"demand_scale": 0.0}, "demand_scale must be in"),
        ({"noise_scale": True}, "noise_scale must be a number"),
        ({"vibration_offset_mms": -0.1}, "vibration_offset_mms must be in"),
        ({"current_offset_a": "2"}, "current_offset_a must be a number"),
    ],
)
def test_bad_profile_values_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MachineProfile(**kwargs)  # type: ignore[arg-type]


def test_simulate_plant_refuses_a_non_profile() -> None:
    with pytest.raises(ValueError, match="profile must be a MachineProfile"):
        simulate_plant(rows=200, profile={"noise_scale": 2.0})  # type: ignore[arg-type]
