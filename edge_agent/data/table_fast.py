"""The vectorised reader of history rows: a block of CSV text to arrays at C speed, or nothing.

``table_stream`` hands each block here first. numpy's C ``loadtxt`` splits the block and parses
the number columns (a structured dtype: the field count of every row is checked, unused columns
cost one byte), and ``iso_times`` parses the time column in bulk. Whatever it cannot vouch for
(quotes, carriage returns alone, non-ASCII text, a cell ``loadtxt`` rejects: missing-value
tokens, text, a wrong field count) makes it return ``None``, and the block goes through the
reference reader ``table_rows`` instead, which gives the same arrays and the same messages.
Timestamps it does not recognise go one by one through the reference ``parse_time``.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt

from edge_agent.data.iso_times import parse_iso
from edge_agent.data.table_layout import TableLayout
from edge_agent.data.table_rows import (
    ParsedRows,
    backwards_error,
    no_number_error,
    parse_times,
    to_labels,
)

# Widest time cell parsed in bulk; a cell this long or longer sends the block to the reference.
TIME_TEXT_BYTES = 40  # the longest layout parsed in bulk, with microseconds and offset, is 32
_REFUSED = (b'"', b"\r", b"\x00")


def _dtype(layout: TableLayout, epoch_times: bool) -> np.dtype[np.void] | None:
    """One record per row, sensor columns first and side by side (a (rows, C) view), then
    labels, the time cell and a byte for each unused column."""
    order = [*layout.sensor_index, *layout.label_index, layout.time_index]
    if len(set(order)) != len(order):
        return None  # a column used twice: the reference path
    time_kind = "f8" if epoch_times else f"S{TIME_TEXT_BYTES}"
    offsets: dict[int, tuple[str, int]] = {}
    at = 0
    for i in order:
        kind = time_kind if i == layout.time_index else "f8"
        offsets[i] = (kind, at)
        at += np.dtype(kind).itemsize
    for i in range(layout.width):
        if i not in offsets:
            offsets[i] = ("S1", at)
            at += 1
    return np.dtype(
        {
            "names": [f"f{i}" for i in range(layout.width)],
            "formats": [offsets[i][0] for i in range(layout.width)],
            "offsets": [offsets[i][1] for i in range(layout.width)],
            "itemsize": at,
        }
    )


def _time_cell(line: str, layout: TableLayout) -> str:
    return line.split(layout.separator)[layout.time_index]


def _first_and_last(data: bytes) -> tuple[str, str]:
    """The first and last non-empty lines (``loadtxt`` skips only empty ones)."""
    a = 0
    while data.startswith(b"\n", a):
        a += 1
    b = data.find(b"\n", a)
    e = len(data)
    while e > 0 and data[e - 1 : e] == b"\n":
        e -= 1
    first = data[a : b if b >= 0 else len(data)]
    return first.decode("ascii"), data[data.rfind(b"\n", 0, e) + 1 : e].decode("ascii")


def _time_texts(data: bytes, layout: TableLayout, rows: list[int]) -> list[str]:
    """The time cells of kept rows ``rows`` (only on the error path: splits the block)."""
    lines = [line for line in data.decode("ascii").split("\n") if line]
    return [_time_cell(lines[i], layout) for i in rows]


def parse_block(
    data: bytes, layout: TableLayout, first_row: int, *, epoch_times: bool, whole_file: bool
) -> ParsedRows | None:
    """Rows of ``data`` (whole lines, ``\\n`` only) as arrays, or None for the reference path."""
    if any(ch in data for ch in _REFUSED) or not data.isascii() or not data or data.isspace():
        return None
    dtype = _dtype(layout, epoch_times)
    if dtype is None:
        return None
    try:
        table = np.loadtxt(
            io.BytesIO(data), dtype=dtype, delimiter=layout.separator, comments=None,
            ndmin=1, encoding="ascii",
        )  # fmt: skip
    except ValueError:
        return None
    n = int(table.shape[0])
    p, name = layout.path, layout.time_name
    t_field = table[f"f{layout.time_index}"]
    if epoch_times:
        timestamps = np.ascontiguousarray(t_field, dtype=np.float64)
        if not np.isfinite(timestamps).all():
            return None  # the reference names the row
    else:
        cells: npt.NDArray[np.bytes_] = np.ascontiguousarray(t_field)
        lengths = np.char.str_len(cells)
        if lengths.max() >= TIME_TEXT_BYTES:
            return None  # a cell may have been cut
        timestamps, done = parse_iso(cells, lengths)
        for i in np.flatnonzero(~done).tolist():
            one = cells[i].decode("ascii")
            timestamps[i] = parse_times([one], name, p, i + first_row)[0]
    back = np.flatnonzero(np.diff(timestamps) < 0)
    if back.size:
        i = int(back[0]) + 1
        before, after = _time_texts(data, layout, [i - 1, i])
        raise backwards_error(before, after, name, p, i + first_row)
    c = len(layout.sensor_index)
    values = np.array(
        np.ndarray((n, c), np.float64, buffer=table, strides=(table.dtype.itemsize, 8))
    )
    if whole_file:
        for j in np.flatnonzero(np.isnan(values).all(axis=0))[:1].tolist():
            raise no_number_error(layout.sensor_names[j], p)
    labels = {
        lc: to_labels(np.asarray(table[f"f{idx}"], np.float64))
        for lc, idx in zip(layout.label_names, layout.label_index, strict=True)
    }
    first, last = _first_and_last(data)
    return ParsedRows(
        timestamps, values, labels, _time_cell(first, layout), _time_cell(last, layout)
    )
