"""The shape of a history file, read from its header: separator, time, sensor and label columns.

The first step of reading (``table_stream``): everything decided once per file, before any row
is parsed, and every header problem as a :class:`DataError` naming the file and row 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.errors import DataError

TIME_COLUMN_NAMES = ("timestamp", "datetime", "time", "date", "ts")
SEPARATORS = (",", ";", "\t", "|")
# Answer columns that never become features, even when not asked for as labels.
IMPLICIT_LABELS = frozenset({"anomaly", "changepoint", "fault_kind", "label", "is_anomaly"})


@dataclass(frozen=True)
class TableLayout:
    """Which column is what, by index into the header."""

    path: str
    separator: str
    header: tuple[str, ...]
    time_index: int
    sensor_names: tuple[str, ...]
    sensor_index: tuple[int, ...]
    label_names: tuple[str, ...]
    label_index: tuple[int, ...]

    @property
    def width(self) -> int:
        return len(self.header)

    @property
    def time_name(self) -> str:
        return self.header[self.time_index]


def detect_separator(header: str, path: str) -> str:
    counts = {sep: header.count(sep) for sep in SEPARATORS}
    sep, n = max(counts.items(), key=lambda kv: kv[1])
    if n == 0:
        raise DataError(
            "cannot find a column separator in the header (expected one of , ; tab |)",
            path=path,
            row=1,
        )
    return sep


def _find_time_column(header: list[str], time_col: str | None, path: str) -> int:
    if time_col is not None:
        if time_col not in header:
            raise DataError(
                f"time column {time_col!r} not found; columns are {header}", path=path, row=1
            )
        return header.index(time_col)
    lowered = [h.strip().lower() for h in header]
    for name in TIME_COLUMN_NAMES:
        if name in lowered:
            return lowered.index(name)
    raise DataError(
        f"no timestamp column: expected one named {list(TIME_COLUMN_NAMES)} or --time-col NAME; "
        f"columns are {header}",
        path=path,
        row=1,
    )


def make_layout(
    path: str,
    separator: str,
    header: list[str],
    *,
    time_col: str | None,
    label_cols: Sequence[str],
    channels: Sequence[str] | None,
) -> TableLayout:
    """Resolve the columns of a header (already split and stripped)."""
    t_idx = _find_time_column(header, time_col, path)
    for lc in label_cols:
        if lc not in header:
            raise DataError(
                f"label column {lc!r} not found; columns are {header}", path=path, row=1
            )
    reserved = set(label_cols) | {h for h in header if h.lower() in IMPLICIT_LABELS}
    sensor_names = [h for i, h in enumerate(header) if i != t_idx and h not in reserved]
    if channels is not None:
        missing = [c for c in channels if c not in header]
        if missing:
            raise DataError(
                f"channels {missing} are required by the model but not in the file "
                f"(file has {sensor_names})",
                path=path,
                row=1,
            )
        sensor_names = list(channels)
    if not sensor_names:
        raise DataError("no sensor columns besides the timestamp and labels", path=path, row=1)
    return TableLayout(
        path=path,
        separator=separator,
        header=tuple(header),
        time_index=t_idx,
        sensor_names=tuple(sensor_names),
        sensor_index=tuple(header.index(name) for name in sensor_names),
        label_names=tuple(label_cols),
        label_index=tuple(header.index(lc) for lc in label_cols),
    )
