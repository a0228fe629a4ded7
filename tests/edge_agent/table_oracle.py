"""Today's whole-file reader, frozen as the oracle the streaming reader is checked against.

A verbatim copy of ``edge_agent/data/table.py`` before the block reader (commit 41f4752):
row-by-row ``csv`` and ``datetime.fromisoformat``. Only tests import it.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.errors import DataError

TIME_COLUMN_NAMES = ("timestamp", "datetime", "time", "date", "ts")
SEPARATORS = (",", ";", "\t", "|")
MISSING_TOKENS = frozenset({"", "nan", "NaN", "NAN", "na", "NA", "N/A", "null", "NULL", "None"})
# Header row is row 1, so the first data row is row 2.
FIRST_DATA_ROW = 2

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


def _detect_separator(header: str, path: str) -> str:
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


def _parse_one_time(text: str) -> float:
    text = text.strip()
    try:
        return float(text)  # already epoch seconds
    except ValueError:
        pass
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    stamp = dt.datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        # Naive timestamps are taken as UTC: plant historians export local wall-clock time
        # without zone as often as not, and UTC at least never jumps at daylight saving.
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def _parse_times(texts: list[str], column: str, path: str) -> FloatArray:
    out = np.empty(len(texts), dtype=np.float64)
    for i, text in enumerate(texts):
        try:
            out[i] = _parse_one_time(text)
        except ValueError:
            raise DataError(
                f"cannot read timestamp {text!r} (expected ISO 8601 like 2020-03-09 10:14:33 "
                "or epoch seconds)",
                path=path,
                column=column,
                row=i + FIRST_DATA_ROW,
            ) from None
        if not math.isfinite(out[i]):
            raise DataError(
                f"timestamp {text!r} is not finite",
                path=path,
                column=column,
                row=i + FIRST_DATA_ROW,
            )
    return out


def _parse_numbers(texts: list[str], column: str, path: str) -> FloatArray:
    cleaned = ["nan" if t.strip() in MISSING_TOKENS else t for t in texts]
    try:
        return np.asarray(cleaned, dtype=np.float64)
    except ValueError:
        for i, t in enumerate(cleaned):
            try:
                float(t)
            except ValueError:
                raise DataError(
                    f"value {t!r} is not a number; sensor columns must be numeric (use "
                    "--label-col for label columns, or drop text columns)",
                    path=path,
                    column=column,
                    row=i + FIRST_DATA_ROW,
                ) from None
        raise  # unreachable: np.asarray failed, so some float() above failed too


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
    p = str(path)
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            header_line = fh.readline()
            if not header_line.strip():
                raise DataError("file is empty (no header row)", path=p)
            sep = _detect_separator(header_line, p)
            fh.seek(0)
            reader = csv.reader(fh, delimiter=sep)
            header = [h.strip() for h in next(reader)]
            rows = [r for r in reader if r and any(cell.strip() for cell in r)]
    except FileNotFoundError:
        raise DataError("file not found", path=p) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not a UTF-8 text file ({exc.reason})", path=p) from None
    if not rows:
        raise DataError("file has a header but no data rows", path=p)
    width = len(header)
    for i, r in enumerate(rows):
        if len(r) != width:
            raise DataError(
                f"has {len(r)} fields, header has {width} (separator {sep!r})",
                path=p,
                row=i + FIRST_DATA_ROW,
            )

    t_idx = _find_time_column(header, time_col, p)
    for lc in label_cols:
        if lc not in header:
            raise DataError(f"label column {lc!r} not found; columns are {header}", path=p, row=1)
    implicit_labels = {"anomaly", "changepoint", "fault_kind", "label", "is_anomaly"}
    reserved = set(label_cols) | {h for h in header if h.lower() in implicit_labels}
    sensor_names = [h for i, h in enumerate(header) if i != t_idx and h not in reserved]
    if channels is not None:
        missing = [c for c in channels if c not in header]
        if missing:
            raise DataError(
                f"channels {missing} are required by the model but not in the file "
                f"(file has {sensor_names})",
                path=p,
                row=1,
            )
        sensor_names = list(channels)
    if not sensor_names:
        raise DataError("no sensor columns besides the timestamp and labels", path=p, row=1)

    columns = list(zip(*rows, strict=True))
    timestamps = _parse_times(list(columns[t_idx]), header[t_idx], p)
    back = np.flatnonzero(np.diff(timestamps) < 0)
    if back.size:
        i = int(back[0]) + 1
        raise DataError(
            f"timestamps go backwards ({columns[t_idx][i - 1]} then {columns[t_idx][i]}); "
            "sort the file by time",
            path=p,
            column=header[t_idx],
            row=i + FIRST_DATA_ROW,
        )
    values = np.empty((len(rows), len(sensor_names)), dtype=np.float64)
    for j, name in enumerate(sensor_names):
        col = _parse_numbers(list(columns[header.index(name)]), name, p)
        if np.isnan(col).all():
            raise DataError(
                "channel has no numeric value at all (all empty or NaN)", path=p, column=name
            )
        values[:, j] = col
    labels: dict[str, npt.NDArray[np.int8]] = {}
    for lc in label_cols:
        raw = _parse_numbers(list(columns[header.index(lc)]), lc, p)
        labels[lc] = (np.nan_to_num(raw, nan=0.0) > 0).astype(np.int8)
    return SensorTable(
        path=p, timestamps=timestamps, values=values, channels=tuple(sensor_names), labels=labels
    )
