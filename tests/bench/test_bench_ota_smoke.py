"""Reduced run of the over-the-air rollout bench (``bench/ota_rollout.py``): one real agent
process, the test bundle, a short canary and probation. It runs end to end from a fresh clone
and writes well-formed JSON; the figures are recorded by the full run, never asserted here."""

from __future__ import annotations

import json
from pathlib import Path

from bench_loader import load_bench


def test_ota_rollout_bench_smoke(tmp_path: Path, bundle: Path, keys: Path) -> None:
    mod = load_bench("ota_rollout")
    out = tmp_path / "ota.json"
    mod.main(
        [
            "--gateways",
            "1",
            "--bundle",
            str(bundle),
            "--key",
            str(keys / "signing.key"),
            "--speed",
            "20",
            "--canary-s",
            "40",
            "--probation-s",
            "1",
            "--timeout",
            "60",
            "--out",
            str(out),
        ]
    )
    [run] = json.loads(out.read_text())["runs"]
    for name in ("full_release", "shared_files_release"):
        step = run[name]
        assert step["publish_rc"] == 0, step["publish_output_tail"]
        assert step["active"] == "1/1"
        [gw] = step["per_gateway"]
        assert gw["bytes_received"] > 0
        assert gw["rows_unscored_by_swap"] is not None
        assert gw["rss_peak_mb"] > 0
    assert run["agent_exit_codes"] == [0]
