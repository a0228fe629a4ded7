"""Reduced runs of the fleet-learning benchmarks (``bench/fleet_learning.py``,
``bench/fleet_skab.py``): two machines, half an hour each, two rounds, tiny fits.

They prove the benchmarks run end to end and write well-formed JSON, and check what must hold
whatever the figures: the in-memory desk of the sweeps gives exactly the weights ``trainer
federate`` wrote, the computed MQTT packet size is what the broker received, the device cost
subprocess never imported a desk stack. The figures themselves are recorded by the full runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from bench_loader import SKAB, load_bench

SMOKE_ARGS = [
    "--machines", "2", "--history-hours", "0.5", "--fresh-hours", "0.5", "--desk-hours", "1",
    "--epochs", "2", "--rounds", "2", "--max-windows", "300", "--fractions", "1.0,0.01",
    "--attacks", "scaled", "--rules", "fedavg,median", "--seeds", "2", "--curve-seeds", "2",
    "--poll-epochs", "5", "--poll-before-s", "2",
]  # fmt: skip
HAS_BROKER = shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()


def _metrics_ok(m: dict[str, float]) -> None:
    for key in ("f1", "far", "precision", "recall"):
        assert 0.0 <= m[key] <= 1.0, (key, m)


def test_fleet_learning_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    report = load_bench("fleet_learning").main([*SMOKE_ARGS, "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    assert [m["machine"] for m in saved["fleet"]] == ["compressor-01", "compressor-02"]
    assert saved["fleet"][0]["profile"] != saved["fleet"][1]["profile"]
    for method in (saved["local_only"], saved["federated"]["personal"],
                   saved["central"]["personal"], saved["int8"]):  # fmt: skip
        assert len(method["per_machine"]) == 2
        _metrics_ok(method["mean"])
    assert len(saved["federated_rounds"]) == 2
    assert all(r["accepted"] == 2 for r in saved["federated_rounds"])
    assert set(saved["targets"]) >= {"federated_minus_local_f1", "central_minus_federated_f1"}
    assert saved["trainer_federate_check"]["identical"]

    rows = saved["topk"]["rows"]
    assert [r["fraction"] for r in rows] == ["fp32", 1.0, 0.01]
    assert rows[0]["ratio_vs_fp32_weights"] == pytest.approx(1.0, abs=0.01)
    assert rows[2]["envelope_bytes_mean"] < rows[1]["envelope_bytes_mean"]
    assert all(len(r["f1_seeds"]) == 2 for r in rows)
    assert rows[0]["f1_lost_vs_fp32"] == 0
    assert saved["topk"]["target_met_by"] == [r["fraction"] for r in rows if r["meets_target"]]
    wire = saved["topk"]["broker_measured"]
    if HAS_BROKER:
        assert wire["measured"] == wire["computed"]
        assert set(wire["measured"]) == {"1.0", "0.01"}

    table = saved["robustness"]["table"]
    assert set(table) == {"fedavg", "median"}
    assert set(table["fedavg"]) == {"clean", "scaled"}

    cost = saved["device_cost"]
    assert cost["desk_modules_imported"] == []
    assert cost["windows_trained"] == 300
    assert cost["vm_hwm_mib_after"] >= cost["vm_hwm_mib_after_imports"] > 0
    child = cost["in_child"]  # the same round in the agent's nice-19 child process
    assert child["in_child"] is True
    assert child["windows_trained"] == 300
    assert child["child_peak_rss_mib"] > 0
    assert child["desk_modules_imported"] == []
    assert len(saved["seed_spread"]["f1"]) == 2
    if HAS_BROKER:
        polling = cost["while_polling"]
        assert polling["round_outcome"] == "sent"
        assert polling["polls_before"]["count"] > 1
    assert saved["machine"]


@pytest.mark.skipif(not SKAB.is_dir(), reason="../shared/datasets/skab not present")
def test_fleet_skab_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "fleet_skab.json"
    report = load_bench("fleet_skab").main(
        ["--limit", "1", "--epochs", "2", "--rounds", "2", "--out", str(out)]
    )
    saved = json.loads(out.read_text())
    assert report["files"] == saved["files"] == 2  # valve1/0.csv and valve2/0.csv
    for side in (saved["initial_global"]["personal"], saved["federated"]["personal"],
                 saved["federated"]["global"], saved["federated_int8"]):  # fmt: skip
        _metrics_ok(side["pooled"])
        assert "nab_standard" in side["pooled"]
    assert len(saved["federated"]["personal"]["per_file_f1"]) == 2
    assert sum(saved["federated_int8"]["threshold_sources"].values()) == 2
    assert len(saved["federated_rounds"]) == 2


def test_fleet_round_child_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "round_child.json"
    load_bench("fleet_round_child").main(
        ["--windows", "200", "--epochs", "1", "--history", "6000", "--fit-epochs", "1",
         "--out", str(out)]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    here, child = saved["in_process"], saved["in_child"]
    assert here["child_peak_rss_mib"] is None
    assert child["child_peak_rss_mib"] > 0
    # The same seeded round either way: the child trains exactly what the process would.
    assert child["loss_last"] == here["loss_last"]
    assert child["windows_trained"] == here["windows_trained"] == 200
    assert saved["packages"]["numpy"]
