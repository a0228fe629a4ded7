"""Reduced run of bench/fault_soak.py: every fault injected once into a real agent, briefly.

Figures are recorded by the full run in bench/results/, never asserted here."""

from __future__ import annotations

import json
from pathlib import Path

from bench_loader import load_bench


def test_fault_soak_bench_smoke(tmp_path: Path, bundle: Path, keys: Path) -> None:
    out = tmp_path / "soak.json"
    load_bench("fault_soak").main(
        ["--minutes", "0.5", "--fault-s", "3", "--bundle", str(bundle),
         "--trust", str(keys / "signing.pub"), "--out", str(out)]
    )
    saved = json.loads(out.read_text())
    assert [f["name"] for f in saved["faults"]] == [
        "disk_full", "broker_down", "clock_back", "clock_forward", "source_crash",
        "device_gone", "disk_full+device_gone",
    ]
    assert saved["rows"] > 0
    assert saved["events_emitted"] >= 0
    assert "events_lost" in saved
    assert saved["per_10s"]
