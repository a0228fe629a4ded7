"""replay's output text built in bulk against the per-row writer it replaces, byte for byte."""

from __future__ import annotations

import csv
import io

import numpy as np

from edge_agent.replay_format import (
    NUMBER_BYTES,
    format_g6,
    format_g6_sparse,
    format_iso,
    iso_text,
    score_lines,
)

EDGE_VALUES = [0.0, -0.0, np.nan, np.inf, -np.inf, 0.5, 1.5, 2.5, 0.15, 0.25, 123456.5, 1234565.0,
               999999.5, 9999995.0, 1e-4, 9.99999e-5, 0.000123456789, 1e-5, 1e22, 1e23, 1e300,
               5e-324, 1.0, 10.0, 1e5, 1e6, 0.1, 0.3, 1 / 3, 2 / 3, -7.25e-12, 0.999999,
               0.9999995, 99999.95, 1e-100, 123456.0, 1234567.0]  # fmt: skip


def _texts(cells: np.ndarray) -> list[str]:
    return [bytes(row[row != 0]).decode("ascii") for row in cells]


def test_six_significant_digits_as_python_formats_them() -> None:
    rng = np.random.default_rng(7)
    x = np.concatenate([
        rng.random(50_000) * 10.0 ** rng.integers(-30, 30, 50_000),
        -rng.random(5_000),
        *(np.round(rng.random(2_000), k) for k in range(1, 9)),  # short decimals: ties nearby
        np.array(EDGE_VALUES),
    ])  # fmt: skip
    cells = format_g6(x)
    assert cells.shape == (x.size, NUMBER_BYTES)
    assert _texts(cells) == [f"{v:.6g}" for v in x.tolist()]


def test_zeros_apart_give_the_same_bytes() -> None:
    """Most p_anomaly values are 0: formatted apart, every cell is still format_g6's."""
    rng = np.random.default_rng(10)
    x = np.where(rng.random(20_000) < 0.8, 0.0, rng.random(20_000) * 10.0 ** rng.integers(-9, 9))
    x[::7] = -0.0
    x[::11] = np.nan
    for values in (x, np.zeros(5), -np.zeros(5), np.array(EDGE_VALUES), x[:0]):
        np.testing.assert_array_equal(format_g6_sparse(values), format_g6(values))


def test_timestamps_as_datetime_writes_them() -> None:
    rng = np.random.default_rng(8)
    t = np.concatenate([
        rng.integers(-2**34, 2**34, 20_000).astype(np.float64),
        rng.random(20_000) * 4e9,
        np.round(rng.random(5_000) * 2e9, 3),
        np.array([0.0, 0.0005, 0.9995, 0.9999995, -0.0005, -1.5, 1e-7, 1583748873.25]),
    ])  # fmt: skip
    assert _texts(format_iso(t)) == [iso_text(v) for v in t.tolist()]


def test_rows_as_the_csv_writer_wrote_them() -> None:
    rng = np.random.default_rng(9)
    n = 3_000
    ts = 1.6e9 + np.cumsum(rng.random(n))
    stage = rng.integers(0, 3, n).astype(np.int8)
    score = np.where(stage > 0, rng.random(n) * 3, 0.0)
    p = np.where(stage > 0, rng.random(n) ** 8, 0.0)
    alert = rng.random(n) < 0.2
    fault = rng.random(n) < 0.1
    ref = io.StringIO(newline="")
    csv.writer(ref).writerows(
        (iso_text(float(a)), int(b), f"{c:.6g}", f"{d:.6g}", int(e), int(f))
        for a, b, c, d, e, f in zip(ts, stage, score, p, alert, fault, strict=True)
    )
    assert score_lines(ts, stage, score, p, alert, fault) == ref.getvalue().encode("ascii")
    assert score_lines(ts[:0], stage[:0], score[:0], p[:0], alert[:0], fault[:0]) == b""
