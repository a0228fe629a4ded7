"""Reduced run of bench/alert_latency.py: a real agent, a real broker, well-formed JSON.

Figures are recorded by the full run in bench/results/, never asserted here."""

from __future__ import annotations

import json
from pathlib import Path

from bench_loader import load_bench


def test_alert_latency_bench_smoke(tmp_path: Path, bundle: Path, keys: Path) -> None:
    out = tmp_path / "alert.json"
    load_bench("alert_latency").main(
        ["--rows", "5000", "--bundle", str(bundle), "--trust", str(keys / "signing.pub"),
         "--out", str(out)]
    )
    saved = json.loads(out.read_text())
    assert saved["all"]["n"] >= 1
    assert saved["all"]["p99_ms"] >= saved["all"]["p50_ms"] > 0
    assert saved["not_acked_within_s"]["count"] == 0
