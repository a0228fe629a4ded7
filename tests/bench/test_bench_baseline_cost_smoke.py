"""Reduced run of bench/baseline_cost.py: a 2-epoch model, a few hundred timed pushes.

Proves the benchmark runs from a fresh clone and writes well-formed JSON; the figures are
recorded by the full run in bench/results/, never asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench_loader import load_bench


def test_baseline_cost_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    args = ["--history", "8000", "--live", "3000", "--epochs", "2", "--pushes", "300",
            "--repeats", "1", "--out", str(out)]  # fmt: skip
    report = load_bench("baseline_cost").main(args)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["rows"] == 3000
    assert saved["pushes_timed"] == 300
    for variant in ("fixed", "all_adapting"):
        assert saved[variant]["push_ms_p50"] <= saved[variant]["push_ms_p99"]
        assert saved[variant]["batch_rows_per_s"] > 0
