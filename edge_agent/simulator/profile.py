"""How one simulated compressor differs from the plant simulator's reference machine.

Pipeline position: an input of :func:`edge_agent.simulator.plant.simulate_plant`. A fleet of
machines that are alike but not identical (the non-IID fleet the fleet-learning benchmark
needs, ``bench/fleet_learning.py``) is one :class:`MachineProfile` per machine: its pressure
setpoints, the ambient temperature of its room, how much air its plant draws, how noisy its
transmitters are, and how worn it is. :data:`DEFAULT_PROFILE` is the reference machine: every
field neutral (offsets 0, scales 1), so a seed simulated with it is bit-identical to what the
simulator produced before profiles existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

# Limits a profile is checked against: wide enough for any compressor room, narrow enough that
# the load/unload controller, the demand clip and the transmitter floors stay meaningful.
MAX_PRESSURE_OFFSET_BAR = 2.0  # setpoints stay well above atmospheric and below the relief
MAX_AMBIENT_OFFSET_C = 25.0  # from an unheated hall in winter to a hot plant room
DEMAND_SCALE_RANGE = (0.2, 3.0)  # the demand clip still bounds the result
NOISE_SCALE_RANGE = (0.1, 10.0)
MAX_VIBRATION_OFFSET_MMS = 5.0  # beyond this a bearing is a fault, not wear
MAX_CURRENT_OFFSET_A = 30.0


@dataclass(frozen=True)
class MachineProfile:
    """One machine's departures from the reference compressor (all neutral by default)."""

    # Added to the load, unload and nominal pressure setpoints (bar): a plant that runs its
    # network at 7.5/8.5 bar instead of 6.5/7.5. The motor's current and delivery follow the
    # discharge pressure, so they shift with it.
    pressure_offset_bar: float = 0.0
    # Added to the room temperature (°C); the oil temperature rides on it.
    ambient_offset_c: float = 0.0
    # Multiplies the air demand of the shift pattern and its wander (then clipped as usual), so
    # the duty cycle (share of time loaded) differs; idle-period leakage is unchanged.
    demand_scale: float = 1.0
    # Multiplies every channel's measurement noise (white and correlated) and the noise the
    # fault injection assumes.
    noise_scale: float = 1.0
    # Wear: added to the vibration (mm/s) and motor current (A) while the motor runs, loaded or
    # unloaded (a stopped motor reads the background and the transmitter zero as before).
    vibration_offset_mms: float = 0.0
    current_offset_a: float = 0.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"machine profile {field.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"machine profile {field.name} must be finite, got {value!r}")
        _check_range(
            "pressure_offset_bar",
            self.pressure_offset_bar,
            (-MAX_PRESSURE_OFFSET_BAR, MAX_PRESSURE_OFFSET_BAR),
            "bar",
        )
        _check_range(
            "ambient_offset_c",
            self.ambient_offset_c,
            (-MAX_AMBIENT_OFFSET_C, MAX_AMBIENT_OFFSET_C),
            "°C",
        )
        _check_range("demand_scale", self.demand_scale, DEMAND_SCALE_RANGE, "x")
        _check_range("noise_scale", self.noise_scale, NOISE_SCALE_RANGE, "x")
        _check_range(
            "vibration_offset_mms",
            self.vibration_offset_mms,
            (0.0, MAX_VIBRATION_OFFSET_MMS),
            "mm/s",
        )
        _check_range("current_offset_a", self.current_offset_a, (0.0, MAX_CURRENT_OFFSET_A), "A")

    @property
    def is_default(self) -> bool:
        """True for the reference machine (every field neutral)."""
        return self == DEFAULT_PROFILE


def _check_range(name: str, value: float, bounds: tuple[float, float], unit: str) -> None:
    low, high = bounds
    if not low <= value <= high:
        raise ValueError(f"machine profile {name} must be in [{low}, {high}] {unit}, got {value!r}")


DEFAULT_PROFILE = MachineProfile()
