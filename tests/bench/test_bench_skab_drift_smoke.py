"""Reduced run of bench/skab_drift.py: anomaly-free rows, fit on 20 %, replay through int8."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_loader import SKAB, load_bench

pytestmark = pytest.mark.skipif(
    not (SKAB / "anomaly-free" / "anomaly-free.csv").is_file(), reason="SKAB data set not present"
)


def test_skab_drift_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "drift.json"
    report = load_bench("skab_drift").main(["--rows", "3000", "--epochs", "2", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == 3000
    assert saved["train_rows"] == 600
    assert len(saved["alert_share_per_block"]) == 3
    assert 0.0 <= saved["alert_share_after_training"] <= 1.0
    assert saved["target_met"] == (saved["alert_share_after_training"] <= 0.10)
    moves = [c["max_abs_block_move_in_train_std"] for c in saved["channels_by_move"]]
    assert len(moves) == 8
    # 10 minutes of the rig warming up: the thermocouple trends, so its level adapts.
    assert "Thermocouple" in saved["adapting_channels"]
    assert not {"Current", "Voltage"} & set(saved["adapting_channels"])
    assert moves == sorted(moves, reverse=True)
    assert report["machine"] == saved["machine"]
