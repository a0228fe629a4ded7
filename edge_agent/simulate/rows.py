"""The rows ``edge_agent simulate`` serves: the simulated compressor, or a recorded CSV.

Part of the simulator that stands in for a plant: each tick the servers publish one row of
channel values. Without data the rows come from :class:`PlantStream` (an endless stream of
the compressor with labelled faults), or with ``--demo`` from :class:`DemoStream` (every fault
kind in turn, the first within a minute); with ``--data`` they come from a history CSV, which
starts over at its end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from edge_agent.data.table import read_table
from edge_agent.errors import ConfigError
from edge_agent.simulator.demo import DemoStream
from edge_agent.simulator.faults import FaultEpisode
from edge_agent.simulator.plant import CHANNELS, PlantStream

# One simulated chunk is an hour at one row per second; a short warm-up keeps faults coming
# soon after start, which is what a demo wants to show.
CHUNK_ROWS = 3600
WARMUP_FRACTION = 0.05
ROW_PERIOD_S = 1.0


class RowFeed:
    """An endless sequence of rows, each a ``{channel: value}`` for the channels asked for."""

    def __init__(
        self,
        channels: Sequence[str],
        *,
        data: Path | None = None,
        seed: int = 0,
        fault_fraction: float = 0.08,
        all_channels: bool = False,
        demo: bool = False,
    ) -> None:
        """``channels`` must all be in the data; ``all_channels`` adds the data's others (for
        a ``kv`` serial line that names no keys and so sends everything). ``demo`` serves the
        demo schedule (``fault_fraction`` does not apply); it needs the simulated plant."""
        self.channels = tuple(dict.fromkeys(channels))
        self._stream: PlantStream | None = None
        self._row = 0
        if demo and data is not None:
            raise ConfigError(
                f"simulate: --demo serves the simulated plant's fault schedule and cannot serve "
                f"--data {str(data)!r}; drop one of them"
            )
        if data is None:
            _require(self.channels, CHANNELS, "the simulated plant")
            if all_channels:
                self.channels = tuple(dict.fromkeys([*self.channels, *CHANNELS]))
            try:
                self._stream = (
                    DemoStream(seed=seed, period_s=ROW_PERIOD_S)
                    if demo
                    else PlantStream(
                        chunk_rows=CHUNK_ROWS,
                        warmup_fraction=WARMUP_FRACTION,
                        anomaly_fraction=fault_fraction,
                        seed=seed,
                        period_s=ROW_PERIOD_S,
                    )
                )
            except ValueError as exc:
                raise ConfigError(f"simulate: {exc}") from None
            self._index = [CHANNELS.index(c) for c in self.channels]
            return
        table = read_table(data)
        _require(self.channels, table.channels, str(data))
        if all_channels:
            self.channels = tuple(dict.fromkeys([*self.channels, *table.channels]))
        self._values = table.select(self.channels).values.tolist()

    def next_row(self) -> dict[str, float]:
        """The next row; a CSV starts over after its last row."""
        if self._stream is not None:
            _, values = self._stream.next_sample()
            return {c: float(values[i]) for c, i in zip(self.channels, self._index, strict=True)}
        row = self._values[self._row % len(self._values)]
        self._row += 1
        return {c: float(v) for c, v in zip(self.channels, row, strict=True)}

    @property
    def fault_kind(self) -> str:
        """Ground truth of the last simulated row (``normal`` for CSV data)."""
        return self._stream.last_fault_kind if self._stream is not None else "normal"

    @property
    def simulated(self) -> bool:
        """Whether the rows come from the simulator, which knows its faults (not a CSV)."""
        return self._stream is not None

    @property
    def episode(self) -> tuple[FaultEpisode, int] | None:
        """The fault episode of the last simulated row and the row's place in it (0 for its
        first row, ``length - 1`` for its last); ``None`` for a normal row or CSV data."""
        if self._stream is None:
            return None
        episode = self._stream.last_episode
        if episode is None:
            return None
        return episode, self._stream.last_row - episode.start


def _require(wanted: Sequence[str], available: Sequence[str], where: str) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise ConfigError(
            f"simulate: channel(s) {missing} from the config are not in {where}, which has "
            f"{list(available)}; rename the config's channels or pass data that has them"
        )


def format_value(value: float) -> str:
    """Text of a value on a serial line: enough digits for float32, ``nan`` when missing."""
    return "nan" if math.isnan(value) else f"{value:.7g}"
