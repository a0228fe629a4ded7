"""Reduced run of ``bench/fleet_privacy.py``: two machines, half an hour each, two rounds.

It proves the benchmark runs end to end through the real gateway round (local DP in the
announcement) and the real desk tally (central DP), and checks what must hold whatever the
figures: every setting is there, each epsilon is the accountant's, and C is the median norm.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bench_loader import load_bench

from edge_agent.learn.accountant import epsilon
from edge_agent.learn.privacy import local_epsilon

SMOKE_ARGS = [
    "--machines", "2", "--history-hours", "0.5", "--fresh-hours", "0.5", "--desk-hours", "1",
    "--epochs", "2", "--rounds", "2", "--max-windows", "300", "--central-z", "1,4",
    "--local-z", "1", "--repeats", "1", "--fleet-equivalent", "100",
]  # fmt: skip


def test_fleet_privacy_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "privacy.json"
    report = load_bench("fleet_privacy").main([*SMOKE_ARGS, "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["clip_norm"] == pytest.approx(float(np.median(saved["first_round_update_norms"])),
                                               rel=1e-5)
    rows = saved["rows"]
    assert [(r["mode"], r.get("z"), r.get("fleet")) for r in rows] == [
        ("none", None, None), ("central_clip_only", 1e-9, None),
        ("central", 1.0, 2), ("central", 1.0, 100),
        ("central", 4.0, 2), ("central", 4.0, 100), ("local", 1.0, None),
    ]  # fmt: skip
    for r in rows:
        assert 0.0 <= r["f1_min"] <= r["f1_mean"] <= r["f1_max"] <= 1.0
        if r["mode"] == "central":
            assert r["epsilon"] == pytest.approx(epsilon([r["z"]] * 2, 1e-5).epsilon, abs=1e-3)
            assert r["z_run"] == pytest.approx(r["z"] * 2 / r["fleet"])
        if r["mode"] == "local":
            assert r["epsilon"] == pytest.approx(local_epsilon(r["z"], 2, 1e-5).epsilon, abs=1e-3)
    assert rows[2]["epsilon"] > rows[4]["epsilon"]  # more noise, smaller epsilon
