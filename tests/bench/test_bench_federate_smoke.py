"""Reduced run of bench/federate_broker.py: 12 gateways, the test bundle, a short split round.

It runs end to end from a fresh clone and writes well-formed JSON; the figures are recorded by
the full run, never asserted here beyond what the round guarantees (every delta accepted, the
merged split equal to the single aggregator).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATEWAYS = 12


def test_federate_broker_bench_smoke(
    tmp_path: Path, trained_run: Path, bundle: Path, keys: Path
) -> None:
    sys.path.insert(0, str(ROOT / "bench"))  # the script imports its `common` helpers
    spec = importlib.util.spec_from_file_location(
        "bench_federate_broker", ROOT / "bench" / "federate_broker.py"
    )
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    out = tmp_path / "federate.json"
    argv = ["--gateways", str(GATEWAYS), "--run", str(trained_run), "--bundle", str(bundle)]
    report = mod.main([*argv, "--key", str(keys / "signing.key"), "--split-timeout", "8",
                       "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == report
    (row,) = report["rows"]
    assert row["single"]["accepted"] == GATEWAYS
    split = row["split_two_workers"]
    assert split["merge_exit"] == 0
    assert sum(split["deltas_per_worker"]) == GATEWAYS
    assert split["max_abs_weight_diff_vs_single"] < 1e-6
