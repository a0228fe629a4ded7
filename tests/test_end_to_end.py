"""Simulator → fit → keygen → bundle → replay, through the real CLIs, and what it detects."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.cli import main as agent_main
from edge_agent.data.table import read_table
from edge_agent.simulator import FAULT_KINDS


def _read_scores(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


@pytest.fixture(scope="module")
def replayed(bundle: Path, keys: Path, sim_csv: Path, work: Path) -> Path:
    out = work / "scores.csv"
    assert (
        agent_main(
            [
                "replay",
                "--bundle",
                str(bundle),
                "--data",
                str(sim_csv),
                "--out",
                str(out),
                "--trust",
                str(keys / "signing.pub"),
            ]
        )
        == 0
    )
    return out


def test_replay_writes_one_row_per_input_row(replayed: Path, sim_csv: Path) -> None:
    s = _read_scores(replayed)
    table = read_table(sim_csv, label_cols=["anomaly"])
    assert list(s) == ["timestamp", "stage", "score", "p_anomaly", "alert", "sensor_fault"]
    assert len(s["stage"]) == table.rows
    stage = s["stage"].astype(int)
    assert set(stage) <= {0, 1, 2}
    assert (stage[:31] == 0).all()  # no full 32-sample window yet
    assert set(s["alert"].astype(int)) <= {0, 1}
    assert set(s["sensor_fault"].astype(int)) <= {0, 1}
    p = s["p_anomaly"].astype(float)
    assert ((p >= 0) & (p <= 1)).all()


def test_replay_detects_injected_faults(replayed: Path, sim_csv: Path) -> None:
    s = _read_scores(replayed)
    table = read_table(sim_csv, label_cols=["anomaly"])
    y = table.labels["anomaly"].astype(bool)
    alert = s["alert"].astype(int).astype(bool)
    stage = s["stage"].astype(int)
    # Episodes, not points: an injected fault counts as caught if an alert overlaps it.
    edges = np.flatnonzero(np.diff(np.concatenate([[0], y.astype(int), [0]])))
    episodes = list(zip(edges[::2], edges[1::2], strict=True))
    caught = sum(alert[a:b].any() for a, b in episodes)
    assert caught / len(episodes) >= 0.6, f"caught {caught} of {len(episodes)} fault episodes"
    far = (alert & ~y).sum() / (~y).sum()
    assert far < 0.1, f"false-alarm rate {far:.3f}"
    assert (stage == 2).mean() < 0.5  # the screen keeps most windows away from stage 2


def test_replay_reports_stuck_sensors_by_the_learned_limit(replayed: Path, sim_csv: Path) -> None:
    """Every simulated stuck episode is a sensor fault in replay's output, as data quality
    reports it on the gateway; no normal row far from a fault is one."""
    s = _read_scores(replayed)
    kinds = np.loadtxt(sim_csv, delimiter=",", skiprows=1, usecols=-1, dtype=str)
    fault = s["sensor_fault"].astype(int).astype(bool)
    stuck = kinds == "stuck"
    edges = np.flatnonzero(np.diff(np.concatenate([[0], stuck.astype(int), [0]])))
    episodes = list(zip(edges[::2], edges[1::2], strict=True))
    assert episodes
    assert all(fault[a:b].any() for a, b in episodes)
    table = read_table(sim_csv, label_cols=["anomaly"])
    y = table.labels["anomaly"].astype(bool)
    near = np.convolve(y.astype(float), np.ones(41), mode="same") > 0  # 20 rows either side
    assert not (fault & ~near).any()


def test_replay_is_causal(
    bundle: Path, keys: Path, sim_csv: Path, replayed: Path, tmp_path: Path
) -> None:
    lines = sim_csv.read_text().splitlines()
    cut = 5_000
    prefix = tmp_path / "prefix.csv"
    prefix.write_text("\n".join(lines[: cut + 1]) + "\n")
    out = tmp_path / "prefix_scores.csv"
    assert (
        agent_main(
            [
                "replay",
                "--bundle",
                str(bundle),
                "--data",
                str(prefix),
                "--out",
                str(out),
                "--trust",
                str(keys / "signing.pub"),
            ]
        )
        == 0
    )
    full = replayed.read_text().splitlines()[: cut + 1]
    assert out.read_text().splitlines() == full


def test_manifest_records_parity_and_provenance(bundle: Path, trained_run: Path) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["parity"]["f1_float"] - m["parity"]["f1_int8"] <= 0.02
    assert m["parity"]["auc_float"] - m["parity"]["auc_int8"] <= 0.01
    assert m["channels"][0]["name"] == "pressure_bar"
    assert len(m["training"]["data_fingerprint"]) == 64
    assert m["autoencoder"]["input_dtype"] == "int8"
    run = json.loads((trained_run / "run.json").read_text())
    assert run["validation"]["cascade_recall"] >= 0.98 * run["validation"]["stage2_recall"]
    assert set(FAULT_KINDS) >= {
        "drift",
        "spike",
        "level_shift",
        "stuck",
        "noise_burst",
        "contextual",
    }


def test_evaluate_writes_metrics_and_report(
    bundle: Path, keys: Path, trained_run: Path, sim_csv: Path, tmp_path: Path
) -> None:
    from trainer.cli import main as trainer_main

    out = tmp_path / "eval"
    assert (
        trainer_main(
            [
                "evaluate",
                "--bundle",
                str(bundle),
                "--trust",
                str(keys / "signing.pub"),
                "--run",
                str(trained_run),
                "--data",
                str(sim_csv),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("f1", "pa_f1", "roc_auc", "far", "mar", "nab_standard", "stage2_fraction"):
        assert key in metrics["cascade"]
    assert set(metrics["baselines"]) == {"isolation_forest", "lof", "ocsvm", "pca_t2_spe"}
    pca = metrics["baselines"]["pca_t2_spe"]
    assert 1 <= pca["components"] < pca["channels"]
    assert 0.0 <= pca["f1"] <= 1.0
    assert "<td>pca_t2_spe</td>" in (out / "report.html").read_text()
    html = (out / "report.html").read_text()
    assert "timeline.png" in html
    assert (out / "timeline.png").stat().st_size > 1000


def test_fit_refuses_data_shorter_than_a_window(tmp_path: Path, fast_config: Path) -> None:
    from trainer.cli import main as trainer_main

    p = tmp_path / "short.csv"
    p.write_text("timestamp,x\n" + "".join(f"{i},{i % 7}\n" for i in range(20)))
    out = tmp_path / "run"
    assert (
        trainer_main(["fit", "--data", str(p), "--out", str(out), "--config", str(fast_config)])
        == 2
    )
    assert not out.exists()


def test_fit_is_deterministic_for_a_seed(sim_csv: Path, fast_config: Path, tmp_path: Path) -> None:
    from trainer.cli import main as trainer_main

    lines = sim_csv.read_text().splitlines()
    part = tmp_path / "part.csv"
    part.write_text("\n".join(lines[:2501]) + "\n")
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        args = ["fit", "--data", str(part), "--out", str(out), "--config", str(fast_config)]
        assert trainer_main([*args, "--seed", "5"]) == 0
        runs.append(out)
    a, b = (json.loads((r / "run.json").read_text()) for r in runs)
    assert (runs[0] / "forest.npz").read_bytes() == (runs[1] / "forest.npz").read_bytes()
    assert a["threshold"] == b["threshold"]
    assert a["forest"]["screen_threshold"] == b["forest"]["screen_threshold"]
    assert oct((runs[0]).stat().st_mode & 0o777) == "0o755"
