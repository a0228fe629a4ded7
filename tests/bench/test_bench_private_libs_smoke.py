"""Reduced run of bench/agent_private_libs.py with the Modbus source: the daemon polls the plant
simulator over real Modbus TCP with its libraries private copies, end to end from a fresh clone,
and the JSON is well formed. Figures are recorded by the full run in bench/results/."""

from __future__ import annotations

import json
from pathlib import Path

from bench_loader import load_bench


def test_private_libs_bench_polls_the_simulator_over_modbus(
    tmp_path: Path, bundle: Path, keys: Path
) -> None:
    out = tmp_path / "priv.json"
    load_bench("agent_private_libs").main(
        ["--minutes", "0.1", "--source", "modbus", "--bundle", str(bundle),
         "--trust", str(keys / "signing.pub"), "--out", str(out)]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["source"].startswith("plant simulator over Modbus TCP")
    for run in ("page_release", "no_page_release"):
        assert saved[run]["exit_code"] == 0
        assert saved[run]["rows_processed"] > 0  # readings arrived over Modbus
        assert saved[run]["memory_at_end"]["peak_rss_mb"] >= saved[run]["memory_at_end"]["rss_mb"]
