"""Reading a history file block by block: bounded memory, vectorised where it is safe.

:class:`TableReader` reads the header (``table_layout``), then the rows in blocks of whole lines
and yields each block as a :class:`SensorTable` of consecutive rows, so ``replay`` can score a
file larger than memory and ``read_table`` can join the blocks. Each block is parsed by the
vectorised ``table_fast`` or, when that declines, by the reference ``table_rows``; from the
first block with a double quote on, the rest of the file goes through ``csv`` record by record
(a quoted field may hold a line break). Checks that span blocks (time going backwards at a
block boundary, a channel with no number in the whole file) are done here, with the messages
and row numbers the whole-file reader gives.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from edge_agent.data.table_fast import parse_block
from edge_agent.data.table_layout import TableLayout, detect_separator, make_layout
from edge_agent.data.table_rows import (
    FIRST_DATA_ROW,
    ParsedRows,
    backwards_error,
    check_widths,
    is_blank,
    no_number_error,
    parse_records,
)
from edge_agent.errors import DataError

BOM = b"\xef\xbb\xbf"
# The first block is small: it goes through the reference reader (``csv``), which checks field
# counts before the header's columns are resolved, as the whole-file reader does. Later blocks
# are large (about 100k rows of 8 channels) so the per-block costs vanish; ``replay`` holds two
# or three at a time.
FIRST_BLOCK_BYTES = 64 << 10
BLOCK_BYTES = 8 << 20
QUOTED_BLOCK_RECORDS = 65_536  # records per block once csv reads record by record


@dataclass(frozen=True)
class _Block:
    """Whole lines of the file (``\\r\\n`` made ``\\n``) and where they start, in bytes."""

    data: bytes
    offset: int
    last: bool


def _lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n") if b"\r" in data else data


def _decode(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not a UTF-8 text file ({exc.reason})", path=path) from None


def _records(text: str, sep: str) -> list[list[str]]:
    """Kept (non-blank) csv records of a block."""
    return [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=sep)
            if r and not is_blank(r)]  # fmt: skip


class TableReader:
    """``for chunk in TableReader(path, ...)``: the file's rows as tables, in file order."""

    def __init__(
        self,
        path: str,
        *,
        time_col: str | None = None,
        label_cols: Sequence[str] = (),
        channels: Sequence[str] | None = None,
        block_bytes: int = BLOCK_BYTES,
        first_block_bytes: int = FIRST_BLOCK_BYTES,
    ) -> None:
        self.path = path
        self._options = (time_col, tuple(label_cols), None if channels is None else tuple(channels))
        self._block_bytes = block_bytes
        self._first_block_bytes = min(first_block_bytes, block_bytes)
        self.layout: TableLayout | None = None

    # -- raw blocks ------------------------------------------------------------------------

    def _blocks(self, fh: BinaryIO, start: int) -> Iterator[_Block]:
        carry, offset, size = b"", start, self._first_block_bytes
        while True:
            more = fh.read(size)
            size = self._block_bytes
            data = carry + more
            if not more:
                if data:
                    yield _Block(_lf(data), offset, True)
                return
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                continue
            carry = data[cut:]
            yield _Block(_lf(data[:cut]), offset, False)
            offset += cut

    def _header(self, fh: BinaryIO) -> tuple[str, int]:
        """The first line (with its line end) and where the rows start, in bytes."""
        head = fh.read(self._first_block_bytes)
        skip = len(BOM) if head.startswith(BOM) else 0
        while True:
            ends = [i for i in (head.find(b"\n", skip), head.find(b"\r", skip)) if i >= 0]
            more = b"" if ends else fh.read(self._block_bytes)
            if not more:
                break
            head += more
        end = min(ends) + 1 if ends else len(head)
        if head[end - 1 : end + 1] == b"\r\n":
            end += 1
        return _decode(head[skip:end], self.path), end

    # -- rows ------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[ParsedRows]:
        p = self.path
        try:
            fh = open(p, "rb")  # noqa: SIM115 - closed in the finally below
        except FileNotFoundError:
            raise DataError("file not found", path=p) from None
        try:
            header_line, start = self._header(fh)
            if not header_line.strip():
                raise DataError("file is empty (no header row)", path=p)
            sep = detect_separator(header_line, p)
            if '"' in header_line:
                yield from self._quoted(fh, 0, sep, None, FIRST_DATA_ROW)
                return
            header = [h.strip() for h in header_line.rstrip("\r\n").split(sep)]
            fh.seek(start)
            yield from self._unquoted(fh, start, sep, header)
        finally:
            fh.close()

    def _resolve(self, sep: str, header: list[str]) -> TableLayout:
        time_col, label_cols, channels = self._options
        self.layout = make_layout(
            self.path, sep, header, time_col=time_col, label_cols=label_cols, channels=channels
        )
        return self.layout

    def _unquoted(self, fh: BinaryIO, start: int, sep: str, header: list[str]
                  ) -> Iterator[ParsedRows]:  # fmt: skip
        layout: TableLayout | None = None
        row, epoch = FIRST_DATA_ROW, False
        for block in self._blocks(fh, start):
            if b'"' in block.data:
                yield from self._quoted(fh, block.offset, sep, layout or header, row)
                return
            parsed: ParsedRows | None = None
            if layout is None:
                records = _records(_decode(block.data, self.path), sep)
                if not records:
                    continue
                check_widths(records, len(header), sep, self.path, row)
                layout = self._resolve(sep, header)
                epoch = _is_epoch(records[0][layout.time_index])
                parsed = parse_records(records, layout, row, whole_file=block.last)
            else:
                parsed = parse_block(block.data, layout, row, epoch_times=epoch,
                                     whole_file=False)  # fmt: skip
                if parsed is None:
                    records = _records(_decode(block.data, self.path), sep)
                    if not records:
                        continue
                    check_widths(records, layout.width, sep, self.path, row)
                    parsed = parse_records(records, layout, row, whole_file=False)
            row += parsed.rows
            yield parsed
        if layout is None:
            raise DataError("file has a header but no data rows", path=self.path)

    def _quoted(
        self, fh: BinaryIO, offset: int, sep: str, known: TableLayout | list[str] | None, row: int
    ) -> Iterator[ParsedRows]:
        """The rest of the file from ``offset`` through ``csv``, record by record."""
        fh.seek(offset)
        text = io.TextIOWrapper(fh, encoding="utf-8-sig", newline="")
        reader = csv.reader(text, delimiter=sep)
        layout = known if isinstance(known, TableLayout) else None
        header = known if isinstance(known, list) else None
        try:
            if known is None:
                header = [h.strip() for h in next(reader)]
            batch: list[list[str]] = []
            whole = layout is None and row == FIRST_DATA_ROW
            for record in reader:
                if record and not is_blank(record):
                    batch.append(record)
                if len(batch) >= QUOTED_BLOCK_RECORDS:
                    layout = self._checked(sep, header, layout, batch, row)
                    yield parse_records(batch, layout, row, whole_file=False)
                    row, batch, whole = row + len(batch), [], False
            if layout is None and not batch:
                raise DataError("file has a header but no data rows", path=self.path)
            if batch:
                layout = self._checked(sep, header, layout, batch, row)
                yield parse_records(batch, layout, row, whole_file=whole)
        except UnicodeDecodeError as exc:
            raise DataError(f"not a UTF-8 text file ({exc.reason})", path=self.path) from None
        finally:
            text.detach()

    def _checked(self, sep: str, header: list[str] | None, layout: TableLayout | None,
                 batch: list[list[str]], row: int) -> TableLayout:  # fmt: skip
        """Field counts of ``batch``, then (first time) the header's columns."""
        width = layout.width if layout is not None else len(header or ())
        check_widths(batch, width, sep, self.path, row)
        if layout is not None:
            return layout
        assert header is not None
        return self._resolve(sep, header)


def _is_epoch(text: str) -> bool:
    try:
        float(text.strip())
    except ValueError:
        return False
    return True


def iter_checked(reader: TableReader) -> Iterator[ParsedRows]:
    """The reader's blocks with the checks that span them: order at block boundaries, and at
    the end a channel that had no number anywhere."""
    last_t: float | None = None
    last_text = ""
    seen: npt.NDArray[np.bool_] | None = None
    row = FIRST_DATA_ROW
    for block in reader:
        layout = reader.layout
        assert layout is not None
        if last_t is not None and block.rows and block.timestamps[0] < last_t:
            raise backwards_error(last_text, block.first_time_text, layout.time_name,
                                  reader.path, row)  # fmt: skip
        has = np.asarray(~np.isnan(block.values).all(axis=0), dtype=np.bool_)
        seen = has if seen is None else seen | has
        if block.rows:
            last_t, last_text = float(block.timestamps[-1]), block.last_time_text
        row += block.rows
        yield block
    layout = reader.layout
    if seen is not None and layout is not None and not seen.all():
        raise no_number_error(layout.sensor_names[int(np.argmin(seen))], reader.path)
