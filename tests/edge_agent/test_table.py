"""Reading history files: separators, time columns, labels, and every bad-input message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.data.table import SensorTable, read_table
from edge_agent.errors import DataError


def _write(tmp_path: Path, text: str, name: str = "h.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_semicolon_file_with_labels(tmp_path: Path) -> None:
    p = _write(
        tmp_path, "datetime;a;b;anomaly\n2020-03-09 10:14:33;1.5;2;0\n2020-03-09 10:14:34;;3;1\n"
    )
    t = read_table(p, label_cols=["anomaly"])
    assert t.channels == ("a", "b")
    assert t.timestamps[1] - t.timestamps[0] == 1.0
    assert np.isnan(t.values[1, 0])
    assert t.values[1, 1] == 3.0
    assert t.labels["anomaly"].tolist() == [0, 1]


def test_explicit_time_column_and_epoch_seconds(tmp_path: Path) -> None:
    p = _write(tmp_path, "t_s,x\n100,1\n101.5,2\n")
    t = read_table(p, time_col="t_s")
    assert t.timestamps.tolist() == [100.0, 101.5]


def test_unlabelled_answer_columns_are_not_features(tmp_path: Path) -> None:
    p = _write(tmp_path, "timestamp,x,anomaly,changepoint\n1,1,0,0\n2,2,1,1\n")
    assert read_table(p).channels == ("x",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "file is empty"),
        ("timestamp,x\n", "no data rows"),
        ("timestamp,x\n1,1\n2,abc\n", "column 'x', row 3: value 'abc' is not a number"),
        ("timestamp,x,y\n1,1,\n2,2,nan\n", "column 'y': channel has no numeric value"),
        ("timestamp,x\n5,1\n4,2\n", "column 'timestamp', row 3: timestamps go backwards"),
        ("when,x\n1,1\n", "no timestamp column"),
        ("timestamp,x\n1,1,3\n", "row 2: has 3 fields, header has 2"),
        ("timestamp,x\nyesterday,1\n", "row 2: cannot read timestamp 'yesterday'"),
        ("timestamp x\n1 2\n", "cannot find a column separator"),
    ],
)
def test_bad_files_name_file_column_and_row(tmp_path: Path, text: str, expected: str) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(DataError) as err:
        read_table(p)
    assert str(p) in str(err.value)
    assert expected in str(err.value)


def test_missing_file_and_missing_model_channel(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_table(tmp_path / "nope.csv")
    p = _write(tmp_path, "timestamp,x\n1,1\n")
    with pytest.raises(DataError, match=r"channels \['y'\] are required by the model"):
        read_table(p, channels=["x", "y"])


def test_normal_rows_are_those_no_label_marks() -> None:
    t = SensorTable(
        "x", np.arange(4.0), np.zeros((4, 1)), ("a",),
        labels={"anomaly": np.array([0, 1, 0, 0], np.int8),
                "changepoint": np.array([0, 0, 0, 1], np.int8)},
    )  # fmt: skip
    assert t.normal_rows().tolist() == [True, False, True, False]
    assert SensorTable("x", np.arange(2.0), np.zeros((2, 1)), ("a",)).normal_rows().all()
