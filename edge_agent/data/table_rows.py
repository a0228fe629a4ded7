"""The reference reader of history rows: one record at a time, every quirk and message defined here.

``table_stream`` sends a block of the file here whenever the vectorised reader
(``table_fast``) cannot vouch for giving the same answer: quoted fields, blank-looking lines,
missing-value tokens, text in a number column, a wrong field count. This path decides what a
file means, what it may not contain, and which file, column and row an error names (rows
1-based, the header being row 1, counting the data rows kept, as a spreadsheet of the kept rows
shows them).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.data.table_layout import TableLayout
from edge_agent.errors import DataError

MISSING_TOKENS = frozenset({"", "nan", "NaN", "NAN", "na", "NA", "N/A", "null", "NULL", "None"})
# Header row is row 1, so the first data row is row 2.
FIRST_DATA_ROW = 2

F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]


@dataclass(frozen=True)
class ParsedRows:
    """A block of data rows as arrays, with the time texts that bound it (for messages)."""

    timestamps: F64
    values: F64  # (rows, sensors) in layout order, NaN where missing
    labels: dict[str, I8]
    first_time_text: str
    last_time_text: str

    @property
    def rows(self) -> int:
        return int(self.timestamps.shape[0])


def is_blank(record: Sequence[str]) -> bool:
    """Rows with no non-blank cell are skipped, and not counted as rows."""
    return not any(cell.strip() for cell in record)


def check_widths(records: Sequence[Sequence[str]], layout_width: int, sep: str, path: str,
                 first_row: int) -> None:  # fmt: skip
    for i, r in enumerate(records):
        if len(r) != layout_width:
            raise DataError(
                f"has {len(r)} fields, header has {layout_width} (separator {sep!r})",
                path=path,
                row=i + first_row,
            )


def parse_time(text: str) -> float:
    """One timestamp: epoch seconds, or ISO 8601 (``Z`` or an offset; naive taken as UTC)."""
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


def time_error(text: str, column: str, path: str, row: int) -> DataError:
    return DataError(
        f"cannot read timestamp {text!r} (expected ISO 8601 like 2020-03-09 10:14:33 "
        "or epoch seconds)",
        path=path,
        column=column,
        row=row,
    )


def parse_times(texts: Sequence[str], column: str, path: str, first_row: int) -> F64:
    out = np.empty(len(texts), dtype=np.float64)
    for i, text in enumerate(texts):
        try:
            out[i] = parse_time(text)
        except ValueError:
            raise time_error(text, column, path, i + first_row) from None
        if not math.isfinite(out[i]):
            raise DataError(
                f"timestamp {text!r} is not finite", path=path, column=column, row=i + first_row
            )
    return out


def backwards_error(before: str, after: str, column: str, path: str, row: int) -> DataError:
    return DataError(
        f"timestamps go backwards ({before} then {after}); sort the file by time",
        path=path,
        column=column,
        row=row,
    )


def parse_numbers(texts: Sequence[str], column: str, path: str, first_row: int) -> F64:
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
                    row=i + first_row,
                ) from None
        raise  # unreachable: np.asarray failed, so some float() above failed too


def no_number_error(column: str, path: str) -> DataError:
    return DataError("channel has no numeric value at all (all empty or NaN)", path=path,
                     column=column)  # fmt: skip


def to_labels(raw: F64) -> I8:
    return (np.nan_to_num(raw, nan=0.0) > 0).astype(np.int8)


def parse_records(
    records: Sequence[Sequence[str]], layout: TableLayout, first_row: int, *, whole_file: bool
) -> ParsedRows:
    """Kept (non-blank) records of one block, widths already checked, as arrays.

    ``whole_file``: the block is the entire file, so a channel without any number is reported
    in column order between the columns' parse errors, as the reader always has.
    """
    p = layout.path
    columns = list(zip(*records, strict=True))
    t_texts = columns[layout.time_index]
    timestamps = parse_times(t_texts, layout.time_name, p, first_row)
    back = np.flatnonzero(np.diff(timestamps) < 0)
    if back.size:
        i = int(back[0]) + 1
        raise backwards_error(t_texts[i - 1], t_texts[i], layout.time_name, p, i + first_row)
    values = np.empty((len(records), len(layout.sensor_names)), dtype=np.float64)
    for j, (name, idx) in enumerate(zip(layout.sensor_names, layout.sensor_index, strict=True)):
        col = parse_numbers(columns[idx], name, p, first_row)
        if whole_file and np.isnan(col).all():
            raise no_number_error(name, p)
        values[:, j] = col
    labels = {
        name: to_labels(parse_numbers(columns[idx], name, p, first_row))
        for name, idx in zip(layout.label_names, layout.label_index, strict=True)
    }
    return ParsedRows(timestamps, values, labels, t_texts[0], t_texts[-1])
