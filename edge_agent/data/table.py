"""Reading a sensor history file into arrays: the first step of training and of ``replay``.

A history file is CSV (any of ``,`` ``;`` ``\\t`` ``|`` as separator, detected from the header)
with one timestamp column, numeric sensor columns and optional label columns. Only the Python
standard library and numpy are used, so the device can replay files without pandas.
:func:`iter_table` yields the rows block by block (``table_stream``: vectorised parsing, with
the row-by-row reference ``table_rows`` wherever a block needs it) for files larger than
memory; :func:`read_table` joins the blocks.

Everything that makes a file unusable raises :class:`DataError` naming the file, the column and
the row (1-based, the header being row 1, as a spreadsheet shows it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.data.table_layout import TableLayout
from edge_agent.data.table_rows import ParsedRows
from edge_agent.data.table_stream import BLOCK_BYTES, TableReader, iter_checked
from edge_agent.errors import DataError

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SensorTable:
    """Samples of one machine as read from a file, in file order."""

    path: str
    timestamps: FloatArray  # seconds since the Unix epoch, UTC
    values: FloatArray  # (rows, channels); NaN where the file had no value
    channels: tuple[str, ...]
    labels: dict[str, npt.NDArray[np.int8]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.timestamps.shape[0])

    def normal_rows(self) -> npt.NDArray[np.bool_]:
        """Rows no label column marks anomalous (every row of an unlabelled table)."""
        normal = np.ones(self.rows, np.bool_)
        for lab in self.labels.values():
            normal &= lab == 0
        return normal

    def slice(self, start: int, stop: int | None = None) -> SensorTable:
        """Rows ``[start, stop)`` as a new table sharing nothing with this one."""
        sl = slice(start, stop)
        return SensorTable(
            path=self.path,
            timestamps=self.timestamps[sl].copy(),
            values=self.values[sl].copy(),
            channels=self.channels,
            labels={k: v[sl].copy() for k, v in self.labels.items()},
        )

    def select(self, channels: Sequence[str]) -> SensorTable:
        """The same rows with channels reordered to ``channels`` (a model's order)."""
        missing = [c for c in channels if c not in self.channels]
        if missing:
            raise DataError(
                f"channels {missing} are required by the model but not in the file "
                f"(file has {list(self.channels)})",
                path=self.path,
            )
        idx = [self.channels.index(c) for c in channels]
        return SensorTable(
            path=self.path,
            timestamps=self.timestamps,
            values=self.values[:, idx],
            channels=tuple(channels),
            labels=self.labels,
        )


def _table(layout: TableLayout, block: ParsedRows) -> SensorTable:
    return SensorTable(
        path=layout.path,
        timestamps=block.timestamps,
        values=block.values,
        channels=layout.sensor_names,
        labels=block.labels,
    )


def iter_table(
    path: str | Path,
    *,
    time_col: str | None = None,
    label_cols: Sequence[str] = (),
    channels: Sequence[str] | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> Iterator[SensorTable]:
    """The file's rows as consecutive tables of about ``block_bytes`` of text each.

    Same options, checks and messages as :func:`read_table`; an error found in a later block
    is raised when that block is reached (a channel with no number at all: after the last).
    """
    reader = TableReader(
        str(path), time_col=time_col, label_cols=label_cols, channels=channels,
        block_bytes=block_bytes,
    )  # fmt: skip
    for block in iter_checked(reader):
        assert reader.layout is not None
        yield _table(reader.layout, block)


def read_table(
    path: str | Path,
    *,
    time_col: str | None = None,
    label_cols: Sequence[str] = (),
    channels: Sequence[str] | None = None,
) -> SensorTable:
    """Read a history CSV.

    ``label_cols`` are kept out of the features and returned as 0/1 arrays; ``channels``, if
    given, restricts and orders the sensor columns (a model's channel order). Columns named
    ``anomaly``/``changepoint``/``fault_kind`` that are not asked for as labels are still kept out
    of the features, so a labelled file is never trained on its own answers by accident.
    """
    parts = list(iter_table(path, time_col=time_col, label_cols=label_cols, channels=channels))
    if len(parts) == 1:
        return parts[0]
    return SensorTable(
        path=parts[0].path,
        timestamps=np.concatenate([t.timestamps for t in parts]),
        values=np.concatenate([t.values for t in parts]),
        channels=parts[0].channels,
        labels={k: np.concatenate([t.labels[k] for t in parts]) for k in parts[0].labels},
    )
