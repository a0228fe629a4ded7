"""Reading in blocks: what spans blocks (order, empty channels, row numbers, quotes) and the bound
on what one block holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.data.table import iter_table, read_table
from edge_agent.errors import DataError

BLOCK = 256  # bytes: a few rows per block


def _file(tmp_path: Path, rows: list[str], header: str = "timestamp,x,y") -> Path:
    p = tmp_path / "h.csv"
    p.write_text(header + "\n" + "\n".join(rows) + "\n")
    return p


def _rows(n: int, start: int = 0) -> list[str]:
    return [f"2020-03-09 10:{(start + i) // 60 % 60:02d}:{(start + i) % 60:02d},{i},{i * 0.5}"
            for i in range(n)]  # fmt: skip


def test_blocks_are_bounded_and_join_to_the_whole_file(tmp_path: Path) -> None:
    p = _file(tmp_path, _rows(3000))
    blocks = list(iter_table(p, block_bytes=BLOCK))
    line = len(_rows(1)[0]) + 1
    assert len(blocks) > 100
    assert max(b.rows for b in blocks) <= 2 * BLOCK // line + 1
    whole = read_table(p)
    np.testing.assert_array_equal(np.concatenate([b.values for b in blocks]), whole.values)
    assert np.concatenate([b.timestamps for b in blocks]).tolist() == whole.timestamps.tolist()


def test_time_going_back_across_a_block_boundary_names_both_stamps(tmp_path: Path) -> None:
    rows = _rows(400)
    rows[300] = "2020-03-09 10:00:07,1,1"
    p = _file(tmp_path, rows)
    for size in (BLOCK, 1 << 20):
        with pytest.raises(DataError) as err:
            list(iter_table(p, block_bytes=size))
        assert str(err.value) == (
            f"{p}, column 'timestamp', row 302: timestamps go backwards "
            f"({rows[299].split(',')[0]} then 2020-03-09 10:00:07); sort the file by time"
        )


def test_bad_value_in_a_late_block_names_its_row(tmp_path: Path) -> None:
    rows = _rows(2000)
    rows[1500] = rows[1500].rsplit(",", 1)[0] + ",N/A?"
    p = _file(tmp_path, rows)
    with pytest.raises(DataError, match=r"column 'y', row 1502: value 'N/A\?' is not a number"):
        list(iter_table(p, block_bytes=BLOCK))


def test_a_channel_empty_in_every_block_fails_after_the_last(tmp_path: Path) -> None:
    p = _file(tmp_path, [r.rsplit(",", 1)[0] + "," for r in _rows(500)])
    blocks = iter_table(p, block_bytes=BLOCK)
    assert next(blocks).rows > 0  # the first blocks are delivered
    with pytest.raises(DataError, match="column 'y': channel has no numeric value at all"):
        list(blocks)


def test_quotes_after_the_first_blocks_switch_to_csv_records(tmp_path: Path) -> None:
    rows = _rows(600)
    t, x, y = rows[450].split(",")
    rows[450] = f'{t},"{x}",{y}'  # a quoted number
    rows[451] = rows[451].split(",")[0] + ',"5\n1",2'  # a line break inside quotes
    p = _file(tmp_path, rows)
    with pytest.raises(DataError, match=r"row 453: value '5\\n1' is not a number"):
        list(iter_table(p, block_bytes=BLOCK))
    rows[451] = rows[451].split(",")[0] + ',"51",2'
    p = _file(tmp_path, rows)
    blocks = list(iter_table(p, block_bytes=BLOCK))
    x = np.concatenate([b.values[:, 0] for b in blocks])
    assert x.size == 600
    assert x[450] == 450.0
    assert x[451] == 51.0
