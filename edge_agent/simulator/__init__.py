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

__all__ = [
    "CHANNELS",
    "FAULT_KINDS",
    "UNITS",
    "FaultEpisode",
    "PlantStream",
    "SimulatedPlant",
    "simulate_plant",
]
