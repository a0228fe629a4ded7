"""The offline twins: ``edge_agent adapt`` writes byte for byte the delta the gateway's learner
sends for the same rows, round and settings; ``replay --local-history`` scores with the
threshold that machine's gateway would calibrate."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from bundles import resigned_copy
from learn_support import (
    LEARN,
    MACHINE,
    ROUND,
    agent_config,
    announcement,
    device_key,
    feed,
    open_slot,
    signed,
)
from prometheus_client import CollectorRegistry

from edge_agent.bundle.verify import verify_bundle
from edge_agent.cli import main
from edge_agent.deliver.config import OutboxConfig
from edge_agent.deliver.outbox import Outbox
from edge_agent.detect.cascade import reconstruction_error
from edge_agent.learn.config import LearnConfig
from edge_agent.learn.learner import Learner
from edge_agent.learn.offline import normal_windows
from edge_agent.learn.report import DELTA_TOPIC, LearnMetrics
from edge_agent.learn.rounds import iso_utc
from edge_agent.model_slot import load_cascade
from edge_agent.simulator import MachineProfile, simulate_plant

LOCAL_ROWS = 3_000


def history(path: Path, noise: float, rows: int = LOCAL_ROWS) -> Path:
    plant = simulate_plant(rows=rows, seed=11, anomaly_fraction=0.0,
                           profile=MachineProfile(noise_scale=noise))
    plant.write_csv(path)
    return path


def adapt_args(bundle: Path, keys: Path, data: Path, key: Path, out: Path, created: str
               ) -> list[str]:
    return [
        "adapt", "--bundle", str(bundle), "--trust", str(keys / "signing.pub"),
        "--data", str(data), "--key", str(key), "--out", str(out), "--round", "r-1",
        "--machine", MACHINE, "--created-at", created,
        "--epochs", str(ROUND["epochs"]), "--batch-size", str(ROUND["batch_size"]),
        "--learning-rate", str(ROUND["learning_rate"]), "--prox-mu", str(ROUND["prox_mu"]),
        "--topk-fraction", str(ROUND["topk_fraction"]), "--seed", str(ROUND["seed"]),
        "--min-windows", str(ROUND["min_windows"]), "--max-windows", str(LEARN["max_windows"]),
        "--max-cpu-s", str(LEARN["max_cpu_s"]), "--chunk-rows", str(LEARN["chunk_rows"]),
        "--sample-every-s", str(LEARN["sample_every_s"]),
    ]


def test_adapt_writes_exactly_what_the_gateway_sends(
    tmp_path: Path, bundle: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = history(tmp_path / "local.csv", noise=1.3)
    now = float(int(time.time()))
    key = device_key(tmp_path / "keys")
    out = tmp_path / "delta.bin"
    assert main(adapt_args(bundle, keys, data, key, out, iso_utc(now))) == 0
    assert f"signed as {MACHINE}" in capsys.readouterr().out
    # The gateway: the same rows through its learner, the same round announced and signed.
    box = Outbox(tmp_path / "events.db", OutboxConfig(), deliver=True)
    try:
        learner = Learner(agent_config(tmp_path, bundle, keys, data), box, lambda: None,
                          LearnMetrics(CollectorRegistry()), wall=lambda: now)
        slot = open_slot(bundle, keys)
        learner.use_model(slot)
        feed(learner, slot, data)
        learner.offer(signed(announcement(bundle, keys), keys))
        learner.step(0)
        [sent] = [p for p in box.pending(100) if p.topic == DELTA_TOPIC]
    finally:
        box.close()
    assert sent.payload == out.read_bytes()


def test_adapt_refuses_what_it_cannot_do(
    tmp_path: Path, bundle: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = history(tmp_path / "local.csv", noise=1.0, rows=600)
    key = device_key(tmp_path / "keys")
    created = iso_utc(time.time())
    old = resigned_copy(bundle, tmp_path / "old", keys / "signing.key", {"learning": None})
    assert main(adapt_args(old, keys, data, key, tmp_path / "d", created)) == 2
    assert "not trainable on the device (no learning section)" in capsys.readouterr().err
    args = adapt_args(bundle, keys, data, key, tmp_path / "d", created)
    args[args.index("--min-windows") + 1] = "100000"
    assert main(args) == 2
    assert "fewer than --min-windows 100000" in capsys.readouterr().err
    args = adapt_args(bundle, keys, data, keys / "signing.pub", tmp_path / "d", created)
    assert main(args) == 2
    assert "signing.pub: not an unencrypted PEM private key" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(("noise", "direction"), [(2.0, 1), (0.6, -1)])
def test_replay_with_local_history_scores_with_that_machines_threshold(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path, capsys: pytest.CaptureFixture[str],
    noise: float, direction: int,
) -> None:
    local = history(tmp_path / "local.csv", noise=noise)
    common = ["replay", "--bundle", str(bundle), "--trust", str(keys / "signing.pub"),
              "--data", str(sim_csv)]
    assert main([*common, "--out", str(tmp_path / "plain.csv")]) == 0
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "local.out"), "--local-history",
                 str(local)]) == 0
    said = capsys.readouterr().out
    # The same rule computed here: q95 of this machine's normal errors over the desk's.
    vb = verify_bundle(bundle, keys / "signing.pub")
    cascade = load_cascade(vb)
    cfg = LearnConfig()
    windows, _ = normal_windows(vb, local, cfg)
    t = vb.manifest.threshold
    errors, _ = reconstruction_error(windows, cascade.autoencoder.reconstruct(windows),
                                     t.statistic)
    raw = np.quantile(errors, cfg.personal_quantile) / np.interp(
        cfg.personal_quantile, t.quantile_levels, t.quantile_values)
    assert vb.manifest.learning is not None
    scale = min(max(raw, vb.manifest.learning.threshold_scale_min),
                vb.manifest.learning.threshold_scale_max)
    assert np.sign(raw - 1.0) == direction
    assert f"scale {scale:.4g}" in said
    assert "(local," in said
    plain = np.genfromtxt(tmp_path / "plain.csv", delimiter=",", names=True)
    mine = np.genfromtxt(tmp_path / "local.out", delimiter=",", names=True)
    alerts = int(mine["alert"].sum()) - int(plain["alert"].sum())
    assert np.sign(alerts) in (0, -direction)  # a higher threshold alerts less, never more
    # The screen is the same; stage 2 follows the open alerts, so it runs less with fewer.
    differ = plain["stage"] != mine["stage"]
    assert set(plain["stage"][differ]) | set(mine["stage"][differ]) <= {1.0, 2.0}
    stage2 = int((mine["stage"] == 2).sum()) - int((plain["stage"] == 2).sum())
    assert np.sign(stage2) in (0, -direction)


def test_replay_with_too_short_a_history_keeps_the_manifest_threshold(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = history(tmp_path / "local.csv", noise=2.0, rows=100)
    lines = local.read_text().splitlines(keepends=True)
    local.write_text("".join(lines[:71]))  # 70 rows: 39 windows, fewer than the 50 needed
    common = ["replay", "--bundle", str(bundle), "--trust", str(keys / "signing.pub"),
              "--data", str(sim_csv)]
    assert main([*common, "--out", str(tmp_path / "a.csv")]) == 0
    assert main([*common, "--out", str(tmp_path / "b.csv"), "--local-history", str(local)]) == 0
    assert "(manifest, scale 1: " in capsys.readouterr().out
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
