"""Model swaps in the daemon: SIGHUP after ``bundles/current`` is re-pointed swaps the model
without a config change, a bundle that fails verification leaves the running model scoring,
and a swap closes the old model's open episode before the new model scores a row, which it
does on full windows from the first row on.

The SIGHUP tests run the agent as systemd does (a subprocess with a notify socket, a real
Mosquitto for its heartbeat); the swap itself is checked in-process on a recorded file, where
the rows around the swap can be chosen.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from agent_support import AgentProcess, replay_source, write_config
from broker import Mosquitto, Received, Subscriber
from bundles import point_link, resigned_copy

from edge_agent.agent import EVENTS_DB, STOP_REASON, Agent
from edge_agent.config.load import load_config
from edge_agent.data.table import read_table
from edge_agent.deliver.outbox import read_recent
from edge_agent.model_slot import ModelSlot

MACHINE = "test-machine"
REPLAY_SPEED = 200.0  # rows per second of a 1 s-period recording: a busy, live-looking agent
START_S = 120.0  # first start may compile the Numba kernels
STEP_S = 60.0
CHUNK_ROWS = 37  # rows per push in the in-process test
SWAP_MARGIN = 2  # raw alerts past open_after required after the swap point


def _heartbeats(msgs: list[Received]) -> list[dict[str, Any]]:
    out = []
    for m in msgs:
        if m.topic.endswith("/status"):
            body = m.json()
            if body.get("state") == "online" and "model_version" in body:
                out.append(body)
    return out


def _scoring(version: str, after_rows: int = 0) -> Callable[[list[Received]], bool]:
    """A heartbeat from ``version`` with more than ``after_rows`` rows scored."""

    def ok(msgs: list[Received]) -> bool:
        return any(
            h["model_version"] == version and h["counts"]["rows"] > after_rows
            for h in _heartbeats(msgs)
        )

    return ok


def _rows_of(msgs: list[Received], version: str) -> int:
    return max(h["counts"]["rows"] for h in _heartbeats(msgs)
               if h["model_version"] == version)


def test_sighup_swaps_to_the_bundle_current_points_at_and_refuses_a_bad_one(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path, mosquitto: Mosquitto
) -> None:
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    first = shutil.copytree(bundle, bundles / "first")
    version_a = json.loads((first / "manifest.json").read_text())["model_version"]
    version_b = f"{version_a}-b"
    second = resigned_copy(
        bundle, bundles / "second", keys / "signing.key", {"model_version": version_b}
    )
    broken = shutil.copytree(second, bundles / "broken")
    model = bytearray((broken / "model_int8.tflite").read_bytes())
    model[len(model) // 2] ^= 0xFF
    (broken / "model_int8.tflite").write_bytes(bytes(model))
    current = bundles / "current"
    point_link(current, first)
    cfg = write_config(
        tmp_path / "agent.toml", bundle=current, keys=keys, mqtt_port=mosquitto.port,
        sources=replay_source(sim_csv, speed=REPLAY_SPEED, loop=True),
    )
    config_text = cfg.read_text()
    with Subscriber(mosquitto.port, f"edge/{MACHINE}/status") as sub:
        agent = AgentProcess(cfg)
        try:
            agent.read_notify("READY=1", timeout=START_S)
            sub.wait_until(_scoring(version_a), STEP_S, f"{version_a} scoring")

            point_link(current, second)  # what a deploy script does; the config is untouched
            agent.proc.send_signal(signal.SIGHUP)
            agent.read_notify("reloaded", timeout=STEP_S)
            msgs = sub.wait_until(_scoring(version_b), STEP_S, f"{version_b} scoring")
            rows_b = _rows_of(msgs, version_b)
            sub.wait_until(_scoring(version_b, rows_b), STEP_S, f"{version_b} scoring on")
            log = agent.log()
            assert f"model {version_a} → {version_b} (SIGHUP)" in log
            assert "config unchanged" in log

            point_link(current, broken)
            agent.proc.send_signal(signal.SIGHUP)
            agent.read_notify("reload refused", timeout=STEP_S)
            refused_at = len(sub.messages)
            msgs = sub.wait_until(
                lambda ms: len(_heartbeats(ms[refused_at:])) >= 2, STEP_S,
                "heartbeats after the refusal",
            )
            later = _heartbeats(msgs[refused_at:])
            assert all(h["model_version"] == version_b for h in later)
            assert later[-1]["counts"]["rows"] > later[0]["counts"]["rows"]
            assert "model_int8.tflite does not match its SHA-256" in agent.log()
            assert agent.proc.poll() is None

            agent.proc.send_signal(signal.SIGTERM)
            assert agent.wait(STEP_S) == 0
        finally:
            agent.close()
    assert cfg.read_text() == config_text
    stored = read_recent(tmp_path / "state" / EVENTS_DB, limit=100_000, kind="anomaly")
    assert {r.data()["model_version"] for r in stored} <= {version_a, version_b}


def _swap_point(slot: ModelSlot, ts: np.ndarray, values: np.ndarray) -> int:
    """A row at which the model is in an alert episode and keeps raising raw alerts long
    enough for a fresh model primed there to open its own."""
    batch = slot.pipeline.push(ts, values)
    has = batch.row_window >= 0
    alert = np.zeros(ts.shape[0], np.bool_)
    raw = np.zeros(ts.shape[0], np.bool_)
    alert[has] = batch.alert[batch.row_window[has]]
    raw[has] = batch.raw_alert[batch.row_window[has]]
    k = slot.manifest.alerts.open_after + SWAP_MARGIN
    for s in range(1, ts.shape[0] - k):
        if alert[s - 1] and raw[s - 1 : s + k].all():
            return s
    raise AssertionError("the simulated plant has no long enough alert run")


def test_swap_closes_the_old_episode_first_and_the_new_model_scores_every_row(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path
) -> None:
    second = resigned_copy(
        bundle, tmp_path / "second", keys / "signing.key", {"model_version": "second"}
    )
    cfg_path = write_config(
        tmp_path / "agent.toml", bundle=bundle, keys=keys, sources=replay_source(sim_csv)
    )
    cfg = load_config(cfg_path, ["metrics.enabled=false"])
    agent = Agent(cfg_path, cfg)
    first = agent.model.version
    table = read_table(sim_csv, channels=agent.model.channels).select(agent.model.channels)
    ts, values = table.timestamps, table.values
    reference = ModelSlot.open(bundle, [keys / "signing.pub"], machine_id="ref",
                               events=cfg.events)
    s = _swap_point(reference, ts, values)
    end = s + agent.model.manifest.alerts.open_after + SWAP_MARGIN
    inputs = (agent.sources, agent.sampler, agent.quality)
    try:
        agent.model.warm_up()
        for a in range(0, s, CHUNK_ROWS):
            agent._push_rows(ts[a : min(a + CHUNK_ROWS, s)], values[a : min(a + CHUNK_ROWS, s)])
        open_before = agent.model.episodes.open_episode
        assert open_before is not None
        windows = agent.counts["windows"]

        new = ModelSlot.open(second, cfg.model.trusted_keys, machine_id=cfg.machine_id,
                             events=cfg.events)
        agent.swap_model(new, "test")
        assert agent.model is new
        assert (agent.sources, agent.sampler, agent.quality) == inputs  # same channels: kept
        for i in range(s, end):
            agent._push_rows(ts[i : i + 1], values[i : i + 1])
        assert agent.counts["windows"] - windows == end - s  # every row after the swap scored
        assert new.episodes.open_episode is not None
    finally:
        agent.stop()

    stored = read_recent(cfg.state_dir / EVENTS_DB, 100_000, "anomaly")
    events = [r.data() for r in reversed(stored)]  # oldest first
    closed = [i for i, e in enumerate(events) if e["episode"] == open_before
              and e["state"] == "close"]
    assert len(closed) == 1
    c = closed[0]
    assert events[c]["model_version"] == first
    assert events[c]["detail"].endswith(f"closed early: model {first} replaced by second (test)")
    assert all(e["model_version"] == first for e in events[:c])
    after = events[c + 1 :]
    assert after[0]["state"] == "open"
    assert all(e["model_version"] == "second" for e in after)
    assert after[-1]["state"] == "close"
    assert after[-1]["episode"] == after[0]["episode"]
    assert after[-1]["detail"].endswith(f"closed early: {STOP_REASON}")


def test_a_swap_to_other_channels_restarts_the_inputs_and_primes_by_name(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path
) -> None:
    """The same model with its channels listed in another order: sampler, data quality and
    sources are rebuilt for the new order, and the recent rows are mapped by channel name,
    so the first row after the swap is scored in a full window all the same."""
    doc = json.loads((bundle / "manifest.json").read_text())
    reordered = resigned_copy(
        bundle, tmp_path / "reordered", keys / "signing.key",
        {"model_version": "reordered", "channels": doc["channels"][::-1]},
    )
    cfg_path = write_config(
        tmp_path / "agent.toml", bundle=bundle, keys=keys, sources=replay_source(sim_csv)
    )
    cfg = load_config(cfg_path, ["metrics.enabled=false"])
    agent = Agent(cfg_path, cfg)
    names = agent.model.channels
    table = read_table(sim_csv, channels=names)
    inputs = (agent.sources, agent.sampler, agent.quality)
    n = agent.model.manifest.window.length * 3
    try:
        agent._push_rows(table.timestamps[:n], table.select(names).values[:n])
        new = ModelSlot.open(reordered, cfg.model.trusted_keys, machine_id=cfg.machine_id,
                             events=cfg.events)
        agent.swap_model(new, "test")
        assert new.channels == names[::-1]
        assert agent.sampler is not inputs[1]
        assert agent.quality is not inputs[2]
        assert agent.sources is not inputs[0]
        assert agent.quality.channels == names[::-1]
        windows = agent.counts["windows"]
        agent._push_rows(table.timestamps[n : n + 1], table.select(names[::-1]).values[n : n + 1])
        assert agent.counts["windows"] == windows + 1
    finally:
        agent.stop()
