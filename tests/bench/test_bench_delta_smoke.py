"""Reduced run of bench/delta_size.py: a realistic delta encoded at every fraction, valid JSON.

The recorded figures are in bench/results/delta_size.json (full run); none is asserted here
beyond what the format guarantees.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_delta_size_bench_smoke(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("delta_size", ROOT / "bench" / "delta_size.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["delta_size"] = mod
    spec.loader.exec_module(mod)
    out = tmp_path / "delta.json"
    report = mod.main(["--rows", "4000", "--epochs", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == report
    rows = saved["rows"]
    assert [r["fraction"] for r in rows] == list(mod.FRACTIONS)
    assert rows[-1]["k"] == saved["parameters"]  # fraction 1 sends everything
    assert all(r["index_coding"] in {"varint_gaps", "bitmap"} for r in rows)
