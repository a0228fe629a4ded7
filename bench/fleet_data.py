"""The simulated non-IID fleet of ``bench/fleet_learning.py``: machines, histories, fresh data.

Each machine is the plant simulator with a :class:`edge_agent.simulator.MachineProfile` drawn
from :data:`PROFILE_RANGES` (setpoints, room temperature, demand, transmitter noise, wear), one
continuous run of ``history_hours + fresh_hours``: the first hours, fault-free, are the only
history the gateway has (its local windows); the rest, with every fault kind, is what it is
scored on. The histories start at different hours of the day (machine ``i`` at ``i * 24 / n``
h), so each gateway has seen a different part of the shift pattern and of the daily ambient
swing: the fleet is non-IID in its operating points and in what its data covers. The desk's
machine is the reference compressor (the default profile) with a long history.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_agent.data.table import SensorTable
from edge_agent.simulator import DEFAULT_PROFILE, MachineProfile, SimulatedPlant, simulate_plant

SECONDS_PER_HOUR = 3600.0
DAY_START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
FAULT_SHARE = 0.04  # share of the fresh rows inside a fault episode (the simulator's default)
# Where each profile field is drawn from, uniformly: a fleet of one model of compressor in
# different plants.
PROFILE_RANGES: dict[str, tuple[float, float]] = {
    "pressure_offset_bar": (-0.6, 0.6),
    "ambient_offset_c": (-8.0, 10.0),
    "demand_scale": (0.7, 1.3),
    "noise_scale": (0.7, 1.6),
    "vibration_offset_mms": (0.0, 0.8),
    "current_offset_a": (0.0, 4.0),
}
DESK_SEED = 21
MACHINE_SEED_BASE = 100
# Gap put between pooled histories (central model), far beyond the grid's max_hold, so no
# window spans two machines.
POOL_GAP_S = 3600.0


@dataclass(frozen=True)
class Machine:
    """One gateway's data: its profile, its history (normal) and the whole labelled run."""

    machine_id: str
    profile: MachineProfile
    start_hour: float
    table: SensorTable  # history rows then fresh rows, labels["anomaly"]
    history_rows: int
    plant: SimulatedPlant  # the same run, to write as CSV (replay reads files)

    @property
    def history(self) -> SensorTable:
        return self.table.slice(0, self.history_rows)

    def write_csv(self, directory: Path) -> tuple[Path, Path]:
        """The whole run and the history alone as CSV files in ``directory``."""
        whole, history = (
            directory / f"{self.machine_id}.csv",
            directory / f"{self.machine_id}-history.csv",
        )
        self.plant.write_csv(whole)
        with whole.open(encoding="utf-8") as src, history.open("w", encoding="utf-8") as dst:
            for i, line in enumerate(src):
                if i > self.history_rows:
                    break
                dst.write(line)
        return whole, history

    def describe(self) -> dict[str, object]:
        return {
            "machine": self.machine_id,
            "profile": asdict(self.profile),
            "history_starts_at_hour": round(self.start_hour, 2),
            "history_rows": self.history_rows,
            "fresh_rows": self.table.rows - self.history_rows,
            "fresh_anomalous_rows": int(self.table.labels["anomaly"][self.history_rows :].sum()),
        }


def draw_profiles(n: int, seed: int) -> list[MachineProfile]:
    """``n`` profiles drawn uniformly from :data:`PROFILE_RANGES`."""
    rng = np.random.default_rng(seed)
    return [
        MachineProfile(**{k: round(float(rng.uniform(*r)), 3) for k, r in PROFILE_RANGES.items()})
        for _ in range(n)
    ]


def to_table(plant: SimulatedPlant, name: str) -> SensorTable:
    """A simulated run as the table ``read_table`` would make of its CSV (no file needed)."""
    return SensorTable(
        path=name,
        timestamps=np.array(plant.timestamps, dtype=np.float64),
        values=np.array(plant.values, dtype=np.float64),
        channels=plant.channels,
        labels={"anomaly": np.array(plant.labels, dtype=np.int8)},
    )


def make_machine(
    index: int, n: int, profile: MachineProfile, history_hours: float, fresh_hours: float
) -> Machine:
    history = round(history_hours * SECONDS_PER_HOUR)
    total = history + round(fresh_hours * SECONDS_PER_HOUR)
    start_hour = index * 24.0 / n
    plant = simulate_plant(
        rows=total,
        seed=MACHINE_SEED_BASE + index,
        anomaly_fraction=FAULT_SHARE * (total - history) / total,
        warmup_fraction=history / total,
        start_time=DAY_START + SECONDS_PER_HOUR * (24.0 + start_hour),
        profile=profile,
    )
    name = f"compressor-{index + 1:02d}"
    return Machine(name, profile, start_hour, to_table(plant, name), history, plant)


def make_fleet(n: int, *, history_hours: float, fresh_hours: float, seed: int = 0) -> list[Machine]:
    return [
        make_machine(i, n, p, history_hours, fresh_hours)
        for i, p in enumerate(draw_profiles(n, seed))
    ]


def desk_history(hours: float) -> SensorTable:
    """The reference compressor's long labelled history: the desk's initial model's data."""
    rows = round(hours * SECONDS_PER_HOUR)
    plant = simulate_plant(rows=rows, seed=DESK_SEED, start_time=DAY_START, profile=DEFAULT_PROFILE)
    return to_table(plant, "desk-reference")


def pooled(tables: list[SensorTable]) -> SensorTable:
    """Histories one after another in time (gaps between them), as one table to fit on."""
    stamps, values, labels = [], [], []
    offset = 0.0
    for t in tables:
        shift = offset - float(t.timestamps[0])
        stamps.append(t.timestamps + shift)
        values.append(t.values)
        labels.append(t.labels.get("anomaly", np.zeros(t.rows, np.int8)))
        offset = float(stamps[-1][-1]) + POOL_GAP_S
    return SensorTable(
        path="pooled-histories",
        timestamps=np.concatenate(stamps),
        values=np.concatenate(values),
        channels=tables[0].channels,
        labels={"anomaly": np.concatenate(labels).astype(np.int8)},
    )
