"""The daemon and ``replay`` agree: the agent fed a recorded file through its sampler, data
quality, streaming pipeline and episode tracker stores exactly the episodes that the batch
pipeline finds in the same file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from agent_support import replay_source, write_config

from edge_agent.agent import EVENTS_DB, Agent
from edge_agent.bundle.verify import verify_bundle
from edge_agent.config.load import load_config
from edge_agent.data.table import read_table
from edge_agent.deliver.outbox import read_recent
from edge_agent.detect.episodes import EpisodeTracker
from edge_agent.model_slot import load_cascade
from edge_agent.pipeline import StreamingPipeline, run_pipeline


def _episodes(rows: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return sorted(
        (r["state"], r["start"], r.get("end"), r.get("peak_score"), r.get("p_anomaly"),
         json.dumps(r.get("top_channels")))
        for r in rows
        if r["kind"] == "anomaly"
    )


def test_daemon_stores_the_episodes_replay_finds(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path
) -> None:
    cfg_path = write_config(
        tmp_path / "agent.toml", bundle=bundle, keys=keys, sources=replay_source(sim_csv)
    )
    cfg = load_config(cfg_path)
    agent = Agent(cfg_path, cfg)
    try:
        agent.start()
        agent.run()
    finally:
        agent.stop()
    stored = [r.data() for r in read_recent(cfg.state_dir / EVENTS_DB, limit=100_000)]

    # The replay side: the whole file in one push, and the batch per-row result.
    vb = verify_bundle(bundle, keys / "signing.pub")
    cascade = load_cascade(vb)
    table = read_table(sim_csv, channels=vb.manifest.channel_names)
    batch = StreamingPipeline(vb.manifest, cascade).push(table.timestamps, table.values)
    tracker = EpisodeTracker(
        cfg.machine_id, vb.manifest.model_version, vb.manifest.channel_names, cfg.events
    )
    expected = [json.loads(e.to_json()) for e in tracker.update(batch, 0.0)]
    assert agent.counts["rows"] == table.rows
    assert agent.counts["windows"] == batch.size
    assert _episodes(stored) == _episodes(expected)

    # And the episodes match the alert runs of `replay`'s per-window result.
    res = run_pipeline(table, vb.manifest, cascade)
    on = res.window_alert.astype(np.int8)
    turned_on = int(np.count_nonzero(np.diff(np.concatenate([[0], on])) == 1))
    opens = [r for r in stored if r["kind"] == "anomaly" and r["state"] == "open"]
    assert turned_on >= 1
    assert len(opens) == turned_on
