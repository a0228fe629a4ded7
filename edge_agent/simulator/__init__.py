"""Plant simulator: a screw air compressor with labelled faults, deterministic by seed.

Pipeline position: the data source when no real machine is connected. The demo, the tests
and the benchmarks write its CSV for the trainer; ``edge_agent simulate`` serves it over
Modbus through :class:`PlantStream`.
"""

from edge_agent.simulator.faults import FAULT_KINDS, FaultEpisode
from edge_agent.simulator.plant import (
    CHANNELS,
    UNITS,
    PlantStream,
    SimulatedPlant,
    simulate_plant,
)
from edge_agent.simulator.profile import DEFAULT_PROFILE, MachineProfile

__all__ = [
    "CHANNELS",
    "DEFAULT_PROFILE",
    "FAULT_KINDS",
    "UNITS",
    "FaultEpisode",
    "MachineProfile",
    "PlantStream",
    "SimulatedPlant",
    "simulate_plant",
]
