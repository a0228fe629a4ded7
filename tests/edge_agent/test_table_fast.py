"""The block reader against today's whole-file reader (``table_oracle``): same arrays, same errors.

Every quirk ``test_table.py`` knows, plus generated files mixing the cells a historian export
can hold (blank and whitespace cells, missing-value tokens, quoted fields, text, ISO 8601 in many
forms, invalid dates, epoch seconds, CRLF, a BOM, blank lines), read whole and in blocks of a
few hundred bytes so that the vectorised path, the reference path and the checks across block
boundaries all run.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import table_oracle

from edge_agent.data.iso_times import parse_iso
from edge_agent.data.table import SensorTable, iter_table, read_table
from edge_agent.data.table_fast import parse_block
from edge_agent.data.table_layout import make_layout
from edge_agent.errors import DataError

QUIRKS = [
    "",
    "timestamp,x\n",
    "timestamp,x\n1,1\n2,abc\n",
    "timestamp,x,y\n1,1,\n2,2,nan\n",
    "timestamp,x\n5,1\n4,2\n",
    "when,x\n1,1\n",
    "timestamp,x\n1,1,3\n",
    "timestamp,x\nyesterday,1\n",
    "timestamp x\n1 2\n",
    "datetime;a;b;anomaly\n2020-03-09 10:14:33;1.5;2;0\n2020-03-09 10:14:34;;3;1\n",
    "t_s,x\n100,1\n101.5,2\n",
    "timestamp,x,anomaly,changepoint\n1,1,0,0\n2,2,1,1\n",
    "\ufefftimestamp,x\r\n2020-01-01T00:00:00Z,1\r\n\r\n2020-01-01T00:00:01Z,2\r\n",
    'timestamp,x,note\n1,1,"a,b"\n2,"2.5",c\n',
    "timestamp,x\n1,1\n   \n;;\n2,2\n",
    "timestamp,x\n2020-02-30 00:00:00,1\n",
    "timestamp,x\n2020-01-01 24:00:00,1\n",
    "timestamp,x\n1,inf\n2,1_000\n",
    "timestamp,x\nnan,1\n",
    "timestamp|x|y\n1|1|\n2|2|3\n",
]

TIMES = [
    "2020-03-09 10:14:{s:02d}", "2020-03-09T10:14:{s:02d}", "2020-03-09T10:14:{s:02d}Z",
    "2020-03-09 10:14:{s:02d}.5", "2020-03-09 10:14:{s:02d}.123456", "2020-03-09 10:{s:02d}",
    "2020-03-09T10:14:{s:02d}+02:00", "2020-03-09T10:14:{s:02d}.25-05:30",
    "2020-03-09T10:14:{s:02d}.1234567", "2020-03-09t10:14:{s:02d}", " 2020-03-09 10:14:{s:02d} ",
    "1583748{s:03d}", "1583748{s:03d}.75", "2020-03-{s:02d}", "20200309T1014{s:02d}",
]  # fmt: skip
BAD_TIMES = ["2020-02-30 10:00:00", "2020-13-01", "yesterday", "", "inf", "2020-03-09 10:14:60"]
CELLS = ["1.5", " 2 ", "-3e-2", "nan", "NA", "", "null", "1_000", "inf", "abc", '"4"', "0x10"]


def _same(path: Path, **kw: object) -> None:
    """Both readers give the same table, or the same error message; in blocks of 16 to 1024
    bytes too (where, of several errors, another may come first)."""
    try:
        want = table_oracle.read_table(path, **kw)  # type: ignore[arg-type]
    except DataError as exc:
        message = str(exc)
        with pytest.raises(DataError) as err:
            read_table(path, **kw)  # type: ignore[arg-type]
        assert str(err.value) == message
        for size in (16, 64, 1024):
            with pytest.raises(DataError):
                _blockwise(path, size, **kw)
        return
    _equal(read_table(path, **kw), want)  # type: ignore[arg-type]
    for size in (16, 64, 1024):
        _equal(_blockwise(path, size, **kw), want)


def _blockwise(path: Path, size: int, **kw: object) -> SensorTable:
    parts = list(iter_table(path, block_bytes=size, **kw))  # type: ignore[arg-type]
    return SensorTable(
        path=str(path),
        timestamps=np.concatenate([t.timestamps for t in parts]),
        values=np.concatenate([t.values for t in parts]),
        channels=parts[0].channels,
        labels={k: np.concatenate([t.labels[k] for t in parts]) for k in parts[0].labels},
    )


def _equal(got: SensorTable, want: table_oracle.SensorTable) -> None:
    assert got.channels == want.channels
    assert got.timestamps.tobytes() == want.timestamps.tobytes()
    np.testing.assert_array_equal(got.values, want.values)  # NaN == NaN here
    assert got.values.dtype == want.values.dtype
    assert got.labels.keys() == want.labels.keys()
    for k in want.labels:
        np.testing.assert_array_equal(got.labels[k], want.labels[k])


@pytest.mark.parametrize("text", QUIRKS)
def test_every_known_quirk_reads_as_today(tmp_path: Path, text: str) -> None:
    p = tmp_path / "q.csv"
    p.write_text(text, encoding="utf-8")
    _same(p)
    if "anomaly" in text:
        _same(p, label_cols=["anomaly"])


def _generated(rng: random.Random, rows: int, bad: float) -> str:
    sep = rng.choice([",", ";", "\t", "|"])
    form = rng.choice(TIMES)
    lines = [sep.join(["timestamp", "a", "b", "anomaly", "fault_kind"])]
    for i in range(rows):
        t = form.format(s=i % 60 if "{s:02d}" in form else i)
        if rng.random() < bad:
            t = rng.choice([*BAD_TIMES, rng.choice(TIMES).format(s=i % 60)])
        cells = [f"{rng.uniform(-5, 5):.{rng.randint(0, 9)}g}" for _ in range(2)]
        if rng.random() < bad:
            cells[rng.randrange(2)] = rng.choice(CELLS)
        label = "1" if rng.random() < 0.1 else rng.choice(["0", "0", "", "NA"] if bad else ["0"])
        lines.append(sep.join([t, *cells, label, rng.choice(["x", "", "fault y"])]))
        if rng.random() < bad / 4:
            lines.append(rng.choice(["", " ", sep * 4]))
    end = rng.choice(["\n", "\r\n"])
    return end.join(lines) + end


@pytest.mark.parametrize("seed", range(120))
def test_generated_files_read_as_today_whole_and_in_blocks(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    p = tmp_path / "g.csv"
    p.write_text(_generated(rng, rng.randint(1, 300), [0.0, 0.002, 0.05][seed % 3]), "utf-8")
    _same(p, label_cols=["anomaly"])


def test_clean_blocks_take_the_vectorised_path(tmp_path: Path) -> None:
    """A clean block is parsed in bulk (not handed to the reference reader)."""
    layout = make_layout("f.csv", ";", ["datetime", "a", "b", "anomaly", "fault_kind"],
                         time_col=None, label_cols=["anomaly"], channels=None)  # fmt: skip
    data = b"2020-03-09 10:14:33;1.5;2;0;x\n\n2020-03-09 10:14:34.25;-1;3e3;1;\n"
    got = parse_block(data, layout, 2, epoch_times=False, whole_file=True)
    assert got is not None
    assert got.timestamps.tolist() == [1583748873.0, 1583748874.25]
    assert got.values.tolist() == [[1.5, 2.0], [-1.0, 3000.0]]
    assert got.labels["anomaly"].tolist() == [0, 1]
    assert (got.first_time_text, got.last_time_text) == (
        "2020-03-09 10:14:33", "2020-03-09 10:14:34.25")  # fmt: skip
    assert parse_block(data.replace(b";3e3;", b";;"), layout, 2, epoch_times=False,
                       whole_file=True) is None  # fmt: skip


def test_bulk_iso_parse_matches_datetime_on_random_instants() -> None:
    """parse_iso against datetime.fromisoformat over years 1700-2250, every layout it takes."""
    rng = np.random.default_rng(0)
    seconds = rng.integers(-8_520_000_000, 8_830_000_000, 20_000)
    micros = rng.integers(0, 1_000_000, seconds.size)
    import datetime as dt

    groups: dict[tuple[str, int, str], list[str]] = {}
    for s, us in zip(seconds.tolist(), micros.tolist(), strict=True):
        stamp = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=s, microseconds=us)
        key = (str(rng.choice([" ", "T"])), int(rng.integers(0, 7)),
               str(rng.choice(["", "Z", "+01:30", "-11:00"])))  # fmt: skip
        text = stamp.isoformat(sep=key[0], timespec="microseconds")
        text = text[: len(text) - 6 + key[1]].rstrip(".")
        groups.setdefault(key, []).append(text + key[2])
    assert len(groups) == 2 * 7 * 4
    for texts in groups.values():
        got, done = parse_iso(np.array([t.encode() for t in texts]))
        assert done.all()
        want = [table_oracle._parse_one_time(t) for t in texts]
        assert got.tobytes() == np.array(want).tobytes()
