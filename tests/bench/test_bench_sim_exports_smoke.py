"""Reduced run of bench/sim_exports.py: one hour of simulated history, a 2-epoch model.

Proves the benchmark runs from a fresh clone and writes well-formed JSON; the figures are
recorded by the full run in bench/results/, never asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench_loader import load_bench


def test_sim_exports_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "exports.json"
    args = ["--hours", "1", "--seeds", "5", "--epochs", "2", "--out", str(out)]
    report = load_bench("sim_exports").main(args)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    (run,) = saved["runs"]
    assert (run["hours"], run["rows"], run["seed"]) == (1.0, 3600, 5)
    assert saved["all_exported_without_force"] == run["exported_without_force"]
    if run["exported_without_force"]:
        assert run["parity"]["positives"] > 0
    else:
        assert run["refusal"].startswith("int8 parity gate failed")
