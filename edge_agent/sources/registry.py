"""Which class runs which ``type`` of source: an explicit table, as pymodbus does for framers.

Backends are imported on first use, so a gateway without pyserial can still run Modbus TCP, and
a missing package names the extra to install.
"""

from __future__ import annotations

from edge_agent.errors import ConfigError
from edge_agent.sources.base import Source
from edge_agent.sources.config import (
    ModbusRtuSource,
    ModbusTcpSource,
    ReplaySource,
    SerialLineSource,
    SourceConfig,
)


def build_source(
    cfg: SourceConfig, model_channels: list[str], *, repeat_every_s: float = 300.0
) -> Source:
    """Instantiate the source a config entry describes (nothing is opened until ``start``).
    ``repeat_every_s``: how often a recurring link warning may be logged again."""
    try:
        if isinstance(cfg, ModbusTcpSource):
            from edge_agent.sources.modbus_tcp import ModbusTcp

            return ModbusTcp(cfg, repeat_every_s=repeat_every_s)
        if isinstance(cfg, ModbusRtuSource):
            from edge_agent.sources.modbus_rtu import ModbusRtu

            return ModbusRtu(cfg, repeat_every_s=repeat_every_s)
        if isinstance(cfg, SerialLineSource):
            from edge_agent.sources.serial_line import SerialLine

            return SerialLine(cfg, repeat_every_s=repeat_every_s)
        if isinstance(cfg, ReplaySource):
            from edge_agent.sources.replay_source import Replay

            return Replay(cfg, model_channels)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"source {cfg.name!r} ({cfg.type}) needs {exc.name!r}: "
            'pip install "edge-anomaly[edge]"'
        ) from None
    raise ConfigError(f"source {cfg.name!r}: no backend for type {cfg.type!r}")  # pragma: no cover
