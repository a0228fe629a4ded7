"""Deterministic simulator of an oil-injected screw air compressor with labelled faults.

Pipeline position: this is where the data starts when no real machine is connected. The demo,
the tests and the benchmarks call :func:`simulate_plant` and feed the CSV written by
:meth:`SimulatedPlant.write_csv` to the trainer; later ``edge_agent simulate`` serves the same
rows over Modbus through :class:`PlantStream`. The same seed always yields bit-identical output,
so results computed on simulated data can be reproduced anywhere, the gateway included (numpy
only, no pandas or scipy).

The normal process is a load/unload compressor feeding a receiver: while loaded, discharge
pressure rises to the unload setpoint; unloaded, it decays to the load setpoint (hysteresis);
unloaded for longer than the run-on timer, the motor stops until pressure falls to the load
setpoint again. Air demand follows a shift pattern, wanders slowly and drops to leakage during
occasional idle periods, which changes the duty cycle. Faults come from
:mod:`edge_agent.simulator.faults`, on a random stream of their own, so the normal process of a
seed is the same with and without faults. A :class:`MachineProfile`
(:mod:`edge_agent.simulator.profile`) makes one machine of a fleet differ from the reference
compressor (setpoints, room temperature, demand, transmitter noise, wear); the default profile
changes nothing.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from edge_agent.simulator.faults import (
    FAULT_KINDS,
    ChannelFaultSpec,
    FaultEpisode,
    check_fault_kinds,
    inject_faults,
    plan_episodes,
)
from edge_agent.simulator.profile import DEFAULT_PROFILE, MachineProfile

CHANNELS: tuple[str, ...] = (
    "pressure_bar",
    "motor_current_a",
    "oil_temp_c",
    "flow_m3min",
    "vibration_rms_mms",
)
UNITS: tuple[str, ...] = ("bar", "A", "°C", "m³/min", "mm/s")

# --- Argument limits -------------------------------------------------------------------------
MIN_ROWS = 100
# Below a millisecond, float64 epoch timestamps (about 2.4e-7 s resolution in 2026) would no
# longer be safely distinct once written with microsecond precision.
MIN_PERIOD_S = 1e-3
MAX_ANOMALY_FRACTION = 0.5

# --- Operating modes -------------------------------------------------------------------------
MODE_STOPPED = 0
MODE_UNLOADED = 1
MODE_LOADED = 2

# --- Compressor and receiver -----------------------------------------------------------------
LOAD_PRESSURE_BAR = 6.5
UNLOAD_PRESSURE_BAR = 7.5
NOMINAL_PRESSURE_BAR = 7.0
ATMOSPHERIC_PRESSURE_BAR = 1.013
RATED_FLOW_M3MIN = 10.0  # free air delivery at the load setpoint
# Delivery falls a little as discharge pressure rises (more internal leakage back to suction).
FLOW_DROP_PER_BAR_M3MIN = 0.25
UNLOADED_FLOW_M3MIN = 0.3  # inlet valve nearly closed, a little air still passes
STOPPED_FLOW_M3MIN = 0.05  # flow transmitter zero offset
RECEIVER_VOLUME_M3 = 3.0
# Unloaded longer than this, the controller stops the motor to save idle power.
RUN_ON_TIMER_S = 240.0
# Pressure dynamics are integrated with at most this step, so hysteresis switching stays
# accurate when the sampling period is long.
MAX_INTEGRATION_STEP_S = 1.0

# --- Air demand, as a fraction of rated flow -------------------------------------------------
# Shift pattern over the day (UTC hours): night shift, day shift with a lunch break, evening
# shift; short ramps between them because lines start and stop gradually.
SHIFT_PATTERN_HOURS = (
    0.0, 5.75, 6.0, 11.95, 12.0, 12.5, 12.55, 13.75, 14.0, 21.75, 22.0, 24.0,
)  # fmt: skip
SHIFT_PATTERN_DEMAND = (
    0.30, 0.30, 0.70, 0.70, 0.15, 0.15, 0.70, 0.70, 0.55, 0.55, 0.30, 0.30,
)  # fmt: skip
DEMAND_WANDER_SD = 0.08  # slow random change of demand around the shift level
DEMAND_WANDER_TIME_S = 1200.0
# Demand stays in a range where the compressor both loads and unloads (it cannot keep up with
# more than its rated flow, and some leakage always remains).
MIN_DEMAND = 0.08
MAX_DEMAND = 0.92
# Idle periods (line stopped): only leakage remains, so the compressor ends up stopping.
IDLE_MEAN_INTERVAL_S = 3.0 * 3600.0
IDLE_DURATION_S = (600.0, 2400.0)
IDLE_LEAK_DEMAND = 0.04

# --- Motor -----------------------------------------------------------------------------------
LOADED_CURRENT_A = 88.0  # at the load setpoint
CURRENT_PER_BAR_A = 6.0  # compression work grows with discharge pressure
UNLOADED_CURRENT_A = 38.0
STOPPED_CURRENT_A = 0.4  # current transmitter zero offset

# --- Oil temperature -------------------------------------------------------------------------
AMBIENT_MEAN_C = 20.0
AMBIENT_DAILY_SWING_C = 4.0
AMBIENT_PEAK_HOUR = 15.0
OIL_RISE_LOADED_K = 65.0  # steady-state rise over ambient when always loaded
OIL_RISE_UNLOADED_K = 50.0
OIL_TIME_CONSTANT_S = 900.0

# --- Vibration -------------------------------------------------------------------------------
LOADED_VIBRATION_MMS = 3.4
UNLOADED_VIBRATION_MMS = 2.1
STOPPED_VIBRATION_MMS = 0.25  # background from neighbouring machines

# --- Measurement noise, per channel in CHANNELS order ----------------------------------------
WHITE_NOISE_SD = (0.015, 0.8, 0.08, 0.12, 0.08)
CORRELATED_NOISE_SD = (0.01, 0.6, 0.15, 0.08, 0.06)
CORRELATION_TIME_S = (20.0, 30.0, 300.0, 20.0, 60.0)
# A stopped motor has no ripple: its current, flow and vibration noise shrink to that of the
# transmitter. Rows are (stopped, unloaded, loaded), columns follow CHANNELS.
NOISE_SCALE_BY_MODE = (
    (1.0, 0.1, 1.0, 0.15, 0.15),
    (1.0, 0.8, 1.0, 0.8, 0.8),
    (1.0, 1.0, 1.0, 1.0, 1.0),
)
# Lowest value each transmitter can report (gauge pressure, currents and flows are positive).
CHANNEL_FLOOR = (0.0, 0.0, -40.0, 0.0, 0.0)

# --- Faults, per channel ---------------------------------------------------------------------
# Typical operating deviation of each channel; fault sizes are multiples of it.
FAULT_SCALE = (0.4, 12.0, 4.0, 1.5, 0.8)
# Physically plausible drift direction: a leak lowers pressure, friction raises current,
# cooler fouling raises oil temperature, a clogging intake lowers flow, bearing wear raises
# vibration.
DRIFT_SIGN = (-1.0, 1.0, 1.0, -1.0, 1.0)
# Fault kinds that make no sense on a channel. Pressure and oil temperature do not depend on
# the operating mode from one sample to the next, so "a value from the other mode" does not
# exist for them. Oil temperature moves by less than its noise over an episode's length, so a
# frozen reading would be indistinguishable from the real one.
_EXCLUDED_KINDS: dict[str, frozenset[str]] = {
    "pressure_bar": frozenset({"contextual"}),
    "oil_temp_c": frozenset({"contextual", "stuck"}),
}

_FAULT_STREAM = 1
_SECONDS_PER_DAY = 86_400.0
_SECONDS_PER_HOUR = 3_600.0


def _fault_specs(noise_scale: float = 1.0) -> tuple[ChannelFaultSpec, ...]:
    specs = []
    for index, name in enumerate(CHANNELS):
        kinds = frozenset(FAULT_KINDS) - _EXCLUDED_KINDS.get(name, frozenset())
        specs.append(
            ChannelFaultSpec(
                name=name,
                scale=FAULT_SCALE[index],
                noise_sd=math.hypot(WHITE_NOISE_SD[index], CORRELATED_NOISE_SD[index])
                * noise_scale,
                floor=CHANNEL_FLOOR[index],
                drift_sign=DRIFT_SIGN[index],
                kinds=kinds,
            )
        )
    return tuple(specs)


FAULT_SPECS: tuple[ChannelFaultSpec, ...] = _fault_specs()


def fault_specs(profile: MachineProfile = DEFAULT_PROFILE) -> tuple[ChannelFaultSpec, ...]:
    """The per-channel fault specs of a machine (its noise level sets the faults' noise)."""
    return FAULT_SPECS if profile.noise_scale == 1.0 else _fault_specs(profile.noise_scale)


@dataclass(frozen=True, eq=False)
class SimulatedPlant:
    """A simulated run: timestamps, channel values and fault ground truth.

    ``fault_kind`` is 0 for normal rows and ``FAULT_KINDS.index(kind) + 1`` inside an episode.
    The arrays are read-only; equality is identity (arrays have no single truth value).
    """

    timestamps: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int8]
    fault_kind: npt.NDArray[np.int8]
    episodes: tuple[FaultEpisode, ...]
    channels: tuple[str, ...]
    units: tuple[str, ...]
    period_s: float

    @property
    def rows(self) -> int:
        return int(self.timestamps.shape[0])

    @property
    def anomaly_fraction(self) -> float:
        return float(self.labels.mean()) if self.rows else 0.0

    def fault_kind_names(self) -> list[str]:
        """Per-row fault kind name, ``normal`` outside episodes."""
        names = ("normal", *FAULT_KINDS)
        return [names[k] for k in self.fault_kind.tolist()]

    def iso_timestamps(self) -> list[str]:
        """Timestamps as ISO 8601 UTC strings, with only as many fractional digits as needed."""
        micros = np.round(self.timestamps * 1e6).astype(np.int64)
        unit: Literal["s", "ms", "us"]
        if np.all(micros % 1_000_000 == 0):
            unit = "s"
        elif np.all(micros % 1_000 == 0):
            unit = "ms"
        else:
            unit = "us"
        instants = micros.astype("datetime64[us]")
        text = np.datetime_as_string(instants, unit=unit)
        return [f"{stamp}Z" for stamp in text.tolist()]

    def write_csv(self, path: str | Path) -> None:
        """Write ``timestamp, <channels>, anomaly, fault_kind`` rows with a header.

        The file is written next to its destination and moved into place, so a reader (or a
        crash) never sees half a file.
        """
        target = Path(path)
        fd, temp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(["timestamp", *self.channels, "anomaly", "fault_kind"])
                kinds = self.fault_kind_names()
                stamps = self.iso_timestamps()
                labels = self.labels.tolist()
                for row, values in enumerate(self.values.tolist()):
                    writer.writerow(
                        [stamps[row], *(f"{v:.6g}" for v in values), labels[row], kinds[row]]
                    )
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, target)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise


@dataclass(frozen=True, eq=False)
class NormalProcess:
    """The fault-free process behind a seed, before fault injection.

    ``mode`` holds MODE_STOPPED / MODE_UNLOADED / MODE_LOADED per row; ``counterfactual`` what
    each mode-dependent channel would read in the opposite mode (loaded vs. not loaded) with the
    same noise, which contextual faults draw from.
    """

    timestamps: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]
    mode: npt.NDArray[np.int8]
    demand: npt.NDArray[np.float64]
    counterfactual: npt.NDArray[np.float64]


def simulate_plant(
    *,
    rows: int = 20_000,
    period_s: float = 1.0,
    seed: int = 0,
    anomaly_fraction: float = 0.04,
    fault_kinds: Sequence[str] = FAULT_KINDS,
    warmup_fraction: float = 0.2,
    start_time: float = 1_767_225_600.0,
    profile: MachineProfile = DEFAULT_PROFILE,
) -> SimulatedPlant:
    """Simulate ``rows`` samples of the compressor every ``period_s`` seconds, with faults.

    No fault starts in the first ``warmup_fraction`` of the rows, so that part can serve as
    training history. Episodes cover ``round(anomaly_fraction * rows)`` rows in total and every
    requested kind gets at least one episode when that budget allows. ``profile`` is the
    machine's departure from the reference compressor (none by default). Raises ValueError for
    arguments outside their documented ranges.
    """
    _check_arguments(
        rows=rows,
        period_s=period_s,
        seed=seed,
        anomaly_fraction=anomaly_fraction,
        warmup_fraction=warmup_fraction,
        start_time=start_time,
    )
    kinds = check_fault_kinds(fault_kinds)
    if anomaly_fraction > 0 and not kinds:
        raise ValueError(
            f"anomaly_fraction is {anomaly_fraction} but fault_kinds is empty; "
            f"pick from: {', '.join(FAULT_KINDS)}"
        )

    if not isinstance(profile, MachineProfile):
        raise ValueError(f"profile must be a MachineProfile, got {type(profile).__name__}")
    process = simulate_normal_process(
        rows=rows, period_s=period_s, seed=seed, start_time=start_time, profile=profile
    )
    fault_rng = np.random.default_rng([seed, _FAULT_STREAM])
    specs = fault_specs(profile)
    episodes = plan_episodes(
        rows=rows,
        first_row=math.ceil(warmup_fraction * rows),
        target_points=round(anomaly_fraction * rows),
        kinds=kinds,
        specs=specs,
        rng=fault_rng,
    )
    return faulty_plant(process, episodes, fault_rng, period_s, profile=profile)


def faulty_plant(
    process: NormalProcess,
    episodes: Sequence[FaultEpisode],
    rng: np.random.Generator,
    period_s: float,
    *,
    profile: MachineProfile = DEFAULT_PROFILE,
) -> SimulatedPlant:
    """``process`` with ``episodes`` injected (magnitudes drawn from ``rng``), read-only."""
    specs = fault_specs(profile)
    injected = inject_faults(process.values, process.counterfactual, episodes, specs, rng)
    arrays = (process.timestamps, injected.values, injected.labels, injected.fault_kind)
    for array in arrays:
        array.setflags(write=False)
    return SimulatedPlant(
        timestamps=process.timestamps,
        values=injected.values,
        labels=injected.labels,
        fault_kind=injected.fault_kind,
        episodes=injected.episodes,
        channels=CHANNELS,
        units=UNITS,
        period_s=float(period_s),
    )


def _check_arguments(
    *,
    rows: int,
    period_s: float,
    seed: int,
    anomaly_fraction: float,
    warmup_fraction: float,
    start_time: float,
) -> None:
    if isinstance(rows, bool) or not isinstance(rows, int | np.integer) or rows < MIN_ROWS:
        raise ValueError(f"rows must be an integer >= {MIN_ROWS}, got {rows!r}")
    if not math.isfinite(period_s) or period_s <= 0:
        raise ValueError(f"period_s must be a positive number of seconds, got {period_s!r}")
    if period_s < MIN_PERIOD_S:
        raise ValueError(f"period_s must be at least {MIN_PERIOD_S} s, got {period_s!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (math.isfinite(anomaly_fraction) and 0.0 <= anomaly_fraction < MAX_ANOMALY_FRACTION):
        raise ValueError(
            f"anomaly_fraction must be in [0, {MAX_ANOMALY_FRACTION}), got {anomaly_fraction!r}"
        )
    if not (math.isfinite(warmup_fraction) and 0.0 <= warmup_fraction < 1.0):
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction!r}")
    if not math.isfinite(start_time):
        raise ValueError(f"start_time must be a finite Unix time, got {start_time!r}")


def simulate_normal_process(
    *,
    rows: int,
    period_s: float,
    seed: int,
    start_time: float,
    profile: MachineProfile = DEFAULT_PROFILE,
) -> NormalProcess:
    """The fault-free compressor for ``seed``: exactly what :func:`simulate_plant` starts from."""
    # The bare seed drives the process; faults use the separate stream [seed, _FAULT_STREAM].
    rng = np.random.default_rng(seed)
    timestamps = start_time + np.arange(rows, dtype=np.float64) * period_s
    hour = np.mod(timestamps, _SECONDS_PER_DAY) / _SECONDS_PER_HOUR

    # Random draws happen in a fixed order whatever the outcome, so a seed always means the
    # same process.
    wander_innovations = rng.standard_normal(rows)
    white = rng.standard_normal((rows, len(CHANNELS)))
    correlated_innovations = rng.standard_normal((rows, len(CHANNELS)))
    idle_count = int(rng.poisson(rows * period_s / IDLE_MEAN_INTERVAL_S))
    idle_starts = rng.uniform(0.0, rows * period_s, size=idle_count)
    idle_lengths = rng.uniform(*IDLE_DURATION_S, size=idle_count)
    offset = profile.pressure_offset_bar
    initial_pressure = float(rng.uniform(LOAD_PRESSURE_BAR + offset, UNLOAD_PRESSURE_BAR + offset))

    demand = _demand(
        hour, wander_innovations, idle_starts, idle_lengths, period_s, profile.demand_scale
    )
    ambient = (AMBIENT_MEAN_C + profile.ambient_offset_c) + AMBIENT_DAILY_SWING_C * np.cos(
        2.0 * np.pi * (hour - AMBIENT_PEAK_HOUR) / 24.0
    )
    pressure, mode, oil = _integrate(demand, ambient, period_s, initial_pressure, offset)

    phi = np.exp(-period_s / np.asarray(CORRELATION_TIME_S))
    correlated = _ar1(
        correlated_innovations * (np.asarray(CORRELATED_NOISE_SD) * np.sqrt(1.0 - phi**2)),
        phi,
    )
    noise = white * np.asarray(WHITE_NOISE_SD) + correlated
    if profile.noise_scale != 1.0:
        noise = noise * profile.noise_scale

    opposite = np.where(mode == MODE_LOADED, MODE_UNLOADED, MODE_LOADED).astype(np.int8)
    values = _measure(pressure, oil, mode, noise, profile)
    counterfactual = _measure(pressure, oil, opposite, noise, profile)
    return NormalProcess(timestamps, values, mode, demand, counterfactual)


def _demand(
    hour: npt.NDArray[np.float64],
    wander_innovations: npt.NDArray[np.float64],
    idle_starts: npt.NDArray[np.float64],
    idle_lengths: npt.NDArray[np.float64],
    period_s: float,
    scale: float = 1.0,
) -> npt.NDArray[np.float64]:
    """Air demand in m³/min of free air, per row (``scale`` multiplies the working demand)."""
    shift = np.interp(hour, SHIFT_PATTERN_HOURS, SHIFT_PATTERN_DEMAND, period=24.0)
    phi = math.exp(-period_s / DEMAND_WANDER_TIME_S)
    wander = _ar1(
        (wander_innovations * DEMAND_WANDER_SD * math.sqrt(1.0 - phi**2))[:, None],
        np.array([phi]),
    )[:, 0]
    working = shift + wander
    if scale != 1.0:
        working = working * scale
    fraction = np.clip(working, MIN_DEMAND, MAX_DEMAND)
    elapsed = np.arange(hour.shape[0], dtype=np.float64) * period_s
    for start, length in zip(idle_starts.tolist(), idle_lengths.tolist(), strict=True):
        fraction[(elapsed >= start) & (elapsed < start + length)] = IDLE_LEAK_DEMAND
    result: npt.NDArray[np.float64] = fraction * RATED_FLOW_M3MIN
    return result


def _integrate(
    demand: npt.NDArray[np.float64],
    ambient: npt.NDArray[np.float64],
    period_s: float,
    initial_pressure: float,
    setpoint_offset_bar: float = 0.0,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int8], npt.NDArray[np.float64]]:
    """Receiver pressure, operating mode and oil temperature at each sampling instant.

    ``setpoint_offset_bar`` moves the load, unload and nominal pressures together.
    """
    rows = demand.shape[0]
    steps = max(1, math.ceil(period_s / MAX_INTEGRATION_STEP_S - 1e-9))
    dt = period_s / steps
    # Receiver pressure change per second for 1 m³/min of free air net inflow.
    bar_per_m3min_s = ATMOSPHERIC_PRESSURE_BAR / (60.0 * RECEIVER_VOLUME_M3)
    oil_alpha = 1.0 - math.exp(-dt / OIL_TIME_CONSTANT_S)
    oil_rise = (0.0, OIL_RISE_UNLOADED_K, OIL_RISE_LOADED_K)
    load_bar = LOAD_PRESSURE_BAR + setpoint_offset_bar
    unload_bar = UNLOAD_PRESSURE_BAR + setpoint_offset_bar
    absolute_nominal = NOMINAL_PRESSURE_BAR + setpoint_offset_bar + ATMOSPHERIC_PRESSURE_BAR

    pressure_out = np.empty(rows, dtype=np.float64)
    oil_out = np.empty(rows, dtype=np.float64)
    mode_out = np.empty(rows, dtype=np.int8)

    p = initial_pressure
    mode = MODE_LOADED
    unloaded_s = 0.0
    # Start warm, at the temperature the first hour's duty cycle would hold, so the first rows
    # are usable history rather than a cold-start transient.
    duty = float(demand[: max(1, int(_SECONDS_PER_HOUR / period_s))].mean()) / RATED_FLOW_M3MIN
    oil = float(ambient[0]) + OIL_RISE_UNLOADED_K + (OIL_RISE_LOADED_K - OIL_RISE_UNLOADED_K) * duty

    demand_list = demand.tolist()
    ambient_list = ambient.tolist()
    for i in range(rows):
        consumed_nominal = demand_list[i]
        ambient_c = ambient_list[i]
        for _ in range(steps):
            if mode == MODE_LOADED:
                inflow = RATED_FLOW_M3MIN - FLOW_DROP_PER_BAR_M3MIN * (p - LOAD_PRESSURE_BAR)
            elif mode == MODE_UNLOADED:
                inflow = UNLOADED_FLOW_M3MIN
            else:
                inflow = 0.0
            # Leaks and open-ended uses consume more the higher the pressure.
            consumed = consumed_nominal * (p + ATMOSPHERIC_PRESSURE_BAR) / absolute_nominal
            p += (inflow - consumed) * bar_per_m3min_s * dt
            if mode == MODE_LOADED:
                if p >= unload_bar:
                    mode = MODE_UNLOADED
                    unloaded_s = 0.0
            elif p <= load_bar:
                mode = MODE_LOADED
            elif mode == MODE_UNLOADED:
                unloaded_s += dt
                if unloaded_s >= RUN_ON_TIMER_S:
                    mode = MODE_STOPPED
            oil += (ambient_c + oil_rise[mode] - oil) * oil_alpha
        pressure_out[i] = p
        mode_out[i] = mode
        oil_out[i] = oil
    return pressure_out, mode_out, oil_out


def _ar1(
    innovations: npt.NDArray[np.float64], phi: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """First-order autoregressive filter along axis 0, started in its stationary state."""
    out = np.empty_like(innovations)
    # Plain float arithmetic in a fixed order: fast enough, and free of the summation-order
    # differences (hence different bits) that a BLAS-backed block formulation would bring.
    for column in range(innovations.shape[1]):
        weight = float(phi[column])
        steps = innovations[:, column].tolist()
        state = steps[0] / math.sqrt(1.0 - weight * weight)
        filtered = [state]
        append = filtered.append
        for step in steps[1:]:
            state = weight * state + step
            append(state)
        out[:, column] = filtered
    return out


def _measure(
    pressure: npt.NDArray[np.float64],
    oil: npt.NDArray[np.float64],
    mode: npt.NDArray[np.int8],
    noise: npt.NDArray[np.float64],
    profile: MachineProfile = DEFAULT_PROFILE,
) -> npt.NDArray[np.float64]:
    """Transmitter readings for the given true state and mode, noise included.

    The delivery and current curves are referred to the reference load setpoint, so a machine
    run at higher pressure (``profile.pressure_offset_bar``) draws more current and delivers a
    little less; wear adds to current and vibration while the motor runs.
    """
    loaded = mode == MODE_LOADED
    unloaded = mode == MODE_UNLOADED
    above_load = pressure - LOAD_PRESSURE_BAR
    current = np.select(
        [loaded, unloaded],
        [
            LOADED_CURRENT_A + CURRENT_PER_BAR_A * above_load,
            np.full_like(pressure, UNLOADED_CURRENT_A),
        ],
        STOPPED_CURRENT_A,
    )
    flow = np.select(
        [loaded, unloaded],
        [
            RATED_FLOW_M3MIN - FLOW_DROP_PER_BAR_M3MIN * above_load,
            np.full_like(pressure, UNLOADED_FLOW_M3MIN),
        ],
        STOPPED_FLOW_M3MIN,
    )
    vibration = np.select(
        [loaded, unloaded],
        [
            np.full_like(pressure, LOADED_VIBRATION_MMS),
            np.full_like(pressure, UNLOADED_VIBRATION_MMS),
        ],
        STOPPED_VIBRATION_MMS,
    )
    running = loaded | unloaded
    if profile.current_offset_a:
        current = np.where(running, current + profile.current_offset_a, current)
    if profile.vibration_offset_mms:
        vibration = np.where(running, vibration + profile.vibration_offset_mms, vibration)
    clean = np.stack([pressure, current, oil, flow, vibration], axis=1)
    scale = np.asarray(NOISE_SCALE_BY_MODE)[mode]
    measured: npt.NDArray[np.float64] = np.maximum(clean + scale * noise, np.asarray(CHANNEL_FLOOR))
    return measured


class PlantStream:
    """Serves simulated rows one at a time, e.g. to the Modbus server of ``edge_agent simulate``.

    The stream is a sequence of :func:`simulate_plant` runs of ``chunk_rows`` rows: chunk ``i``
    uses seed ``seed + i`` and starts one period after the previous chunk ends, so the first
    ``chunk_rows`` samples are exactly ``simulate_plant(rows=chunk_rows, seed=seed, ...)`` and
    the stream never runs out. Each chunk is an independent run (with its own warm-up), so the
    process restarts at chunk boundaries.
    """

    def __init__(
        self,
        *,
        chunk_rows: int = 20_000,
        period_s: float = 1.0,
        seed: int = 0,
        anomaly_fraction: float = 0.04,
        fault_kinds: Sequence[str] = FAULT_KINDS,
        warmup_fraction: float = 0.2,
        start_time: float = 1_767_225_600.0,
        profile: MachineProfile = DEFAULT_PROFILE,
    ) -> None:
        self._chunk_rows = chunk_rows
        self._period_s = period_s
        self._seed = seed
        self._anomaly_fraction = anomaly_fraction
        self._fault_kinds = tuple(fault_kinds) if not isinstance(fault_kinds, str) else fault_kinds
        self._warmup_fraction = warmup_fraction
        self._start_time = start_time
        self._profile = profile
        self._chunk = 0
        self._row = 0
        self._last_row = -1
        # Generating the first chunk now validates the arguments where the caller passed them.
        self._plant = self._generate(0)

    def _generate(self, chunk: int) -> SimulatedPlant:
        return simulate_plant(
            rows=self._chunk_rows,
            period_s=self._period_s,
            seed=self._seed + chunk,
            anomaly_fraction=self._anomaly_fraction,
            fault_kinds=self._fault_kinds,
            warmup_fraction=self._warmup_fraction,
            start_time=self._start_time + chunk * self._chunk_rows * self._period_s,
            profile=self._profile,
        )

    @property
    def plant(self) -> SimulatedPlant:
        """The chunk currently being served, with its labels and episodes."""
        return self._plant

    @property
    def last_fault_kind(self) -> str:
        """Ground truth of the last sample returned: ``normal`` or a fault kind name."""
        if self._last_row < 0:
            return "normal"
        code = int(self._plant.fault_kind[self._last_row])
        return "normal" if code == 0 else FAULT_KINDS[code - 1]

    @property
    def last_row(self) -> int:
        """Row of the last sample returned within :attr:`plant` (-1 before the first)."""
        return self._last_row

    @property
    def last_episode(self) -> FaultEpisode | None:
        """The fault episode of :attr:`plant` the last sample returned is in, if any; its rows
        count within :attr:`plant`, as :attr:`last_row` does."""
        row = self._last_row
        if row < 0 or self._plant.fault_kind[row] == 0:
            return None
        return next(e for e in self._plant.episodes if e.start <= row < e.stop)

    def next_sample(self) -> tuple[float, npt.NDArray[np.float64]]:
        """Return ``(timestamp, values)`` of the next row; values follow ``CHANNELS``."""
        if self._row >= self._plant.rows:
            self._chunk += 1
            self._plant = self._generate(self._chunk)
            self._row = 0
        row = self._row
        self._row += 1
        self._last_row = row
        return float(self._plant.timestamps[row]), self._plant.values[row].copy()
