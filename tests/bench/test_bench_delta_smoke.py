"""Reduced run of bench/delta_size.py: a realistic delta encoded at every fraction, valid JSON.

The recorded figures are in bench/results/delta_size.json (full run); none is asserted here
beyond what the format guarantees.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench_loader import load_bench


def test_delta_size_bench_smoke(tmp_path: Path) -> None:
    mod = load_bench("delta_size")
    out = tmp_path / "delta.json"
    report = mod.main(["--rows", "4000", "--epochs", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == report
    rows = saved["rows"]
    assert [r["fraction"] for r in rows] == list(mod.FRACTIONS)
    assert rows[-1]["k"] == saved["parameters"]  # fraction 1 sends everything
    assert all(r["index_coding"] in {"varint_gaps", "bitmap"} for r in rows)
