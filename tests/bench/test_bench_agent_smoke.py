"""Reduced run of bench/agent_resources.py (start-up, memory, soak; compiled kernels and the
JIT): it runs end to end from a fresh clone and writes well-formed JSON. Figures are recorded
by the full run in bench/results/, never asserted here."""

from __future__ import annotations

import json
from pathlib import Path

from bench_loader import load_bench


def test_agent_resources_bench_smoke(tmp_path: Path, bundle: Path, keys: Path) -> None:
    out = tmp_path / "res.json"
    load_bench("agent_resources").main(
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
