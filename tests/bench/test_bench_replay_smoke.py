"""Reduced run of bench/replay_end_to_end.py: two copies of SKAB anomaly-free, a 2-epoch model.

Proves the benchmark runs from a fresh clone and writes well-formed JSON; the figures are
recorded by the full run in bench/results/, never asserted here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from bench_loader import SKAB, load_bench

SKAB_FREE = SKAB / "anomaly-free"


@pytest.mark.skipif(not SKAB_FREE.is_dir(), reason="../shared/datasets/skab not present")
def test_replay_end_to_end_bench_smoke(tmp_path: Path) -> None:
    mod = load_bench("replay_end_to_end")
    out = tmp_path / "replay.json"
    # This interpreter as the edge side too: the kernels built and run ahead of time.
    report = mod.main(["--copies", "2", "--epochs", "2", "--repeats", "1", "--out", str(out),
                       "--edge-python", sys.executable])  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["data"]["rows"] == 2 * 9405
    assert saved["edge"]["kernels"].startswith("kernels: aot")
    assert saved["desk"]["kernels"].startswith("kernels: jit")
    assert saved["edge"]["summary"] == saved["desk"]["summary"]
    for side in ("edge", "desk", "reference"):
        assert saved[side]["rows"] == 2 * 9405
        assert saved[side]["channel_samples_per_s"] > 0
    assert saved["desk"]["summary"].startswith("scored 18810 rows")
    assert {"imports", "read", "score", "write"} <= set(saved["desk"]["phases_seconds"])
    assert saved["desk"]["peak_rss_mb"] > 0
    assert "desk" in saved["times_reference"]
    assert saved["machine"]
