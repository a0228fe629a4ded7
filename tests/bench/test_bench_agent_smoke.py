"""Reduced runs of the daemon benchmarks (alert latency, start-up/memory/soak): they run end to
end from a fresh clone and write well-formed JSON. Figures are recorded by the full runs in
bench/results/, never asserted here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(ROOT / "bench"))  # the scripts import their `common` helper
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def test_alert_latency_bench_smoke(tmp_path: Path, bundle: Path, keys: Path) -> None:
    out = tmp_path / "alert.json"
    _load("alert_latency").main(
        ["--rows", "5000", "--bundle", str(bundle), "--trust", str(keys / "signing.pub"),
         "--out", str(out)]
    )
    saved = json.loads(out.read_text())
    assert saved["all"]["n"] >= 1
    assert saved["all"]["p99_ms"] >= saved["all"]["p50_ms"] > 0
    assert saved["not_acked_within_s"]["count"] == 0


def test_agent_resources_bench_smoke(tmp_path: Path, bundle: Path, keys: Path) -> None:
    out = tmp_path / "res.json"
    _load("agent_resources").main(
        ["--soak-minutes", "0.15", "--bundle", str(bundle), "--trust", str(keys / "signing.pub"),
         "--out", str(out)]
    )
    saved = json.loads(out.read_text())
    assert saved["startup_ready_s"]["warm_numba_cache"] > 0
    assert saved["startup_ready_s"]["aot"] > 0
    assert saved["aot_jit_cache_files_written"] == []
    assert saved["kernels_build"]["host"]["module_mb"] > 0
    assert saved["soak"]["samples"] >= 2
    assert saved["soak"]["exit_code"] == 0
    assert saved["soak"]["rows_processed"] > 0
    assert saved["jit"]["plus_numba_import_rss_mb"] > 0


def test_fault_soak_bench_smoke(tmp_path: Path, bundle: Path, keys: Path) -> None:
    out = tmp_path / "soak.json"
    _load("fault_soak").main(
        ["--minutes", "1.2", "--fault-s", "5", "--bundle", str(bundle),
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
