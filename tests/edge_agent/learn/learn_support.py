"""Shared pieces of the fleet-learning tests: a device key, an agent config with ``[learn]``,
a real model slot, a signed round for a bundle, and rows pushed through the real pipeline into
a learner the way the agent's main loop does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.bundle.verify import verify_bundle
from edge_agent.config.model import AgentConfig
from edge_agent.data.table import read_table
from edge_agent.learn.bundle_weights import load_train_weights
from edge_agent.learn.device_key import write_key_pair
from edge_agent.learn.learner import Learner
from edge_agent.learn.offline import PUSH_ROWS
from edge_agent.learn.rounds import RoundAnnouncement, iso_utc, sign_round
from edge_agent.model_slot import ModelSlot
from export.keys import load_private_key

MACHINE = "press-7"
HOUR_S = 3600.0
# A fast round: few windows, one epoch; a generous CPU budget keeps it deterministic.
ROUND = {"epochs": 1, "batch_size": 64, "learning_rate": 1e-3, "prox_mu": 0.0,
         "topk_fraction": 0.05, "min_windows": 50, "seed": 3}
LEARN = {"chunk_rows": 200, "sample_every_s": 0.0, "max_windows": 2000, "max_cpu_s": 600.0}


def device_key(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "device.key"
    if not path.exists():
        write_key_pair(path, directory / "device.pub")
    return path


def agent_config(tmp: Path, bundle: Path, keys: Path, data: Path, **learn: Any) -> AgentConfig:
    return AgentConfig.model_validate({
        "machine_id": MACHINE, "state_dir": str(tmp / "state"),
        "model": {"bundle": str(bundle), "trust_key": str(keys / "signing.pub")},
        "sources": [{"type": "replay", "name": "history", "path": str(data)}],
        "mqtt": {"host": "127.0.0.1", "port": 1},
        "learn": {"enabled": True, "device_key": str(device_key(tmp / "keys")),
                  **LEARN, **learn},
    })


def open_slot(bundle: Path, keys: Path) -> ModelSlot:
    from edge_agent.config.model import EventsConfig

    return ModelSlot.open(bundle, [keys / "signing.pub"], machine_id=MACHINE,
                          events=EventsConfig())


def announcement(bundle: Path, keys: Path, round_id: str = "r-1", **changes: Any
                 ) -> RoundAnnouncement:
    manifest = verify_bundle(bundle, keys / "signing.pub").manifest
    weights = load_train_weights(bundle, manifest)
    assert weights is not None
    now = time.time()
    fields: dict[str, Any] = {
        "round_id": round_id, "base_model_version": manifest.model_version,
        "base_fingerprint": weights.fingerprint(), "issued_at": iso_utc(now),
        "deadline": iso_utc(now + HOUR_S), **ROUND,
    }
    fields.update(changes)
    return RoundAnnouncement.model_validate(fields)


def signed(a: RoundAnnouncement, keys: Path) -> bytes:
    return sign_round(a, load_private_key(keys / "signing.key"))


def feed(learner: Learner, slot: ModelSlot, data: Path, rows: int | None = None) -> int:
    """Push the first ``rows`` rows of ``data`` (all: None) through ``slot``'s pipeline into
    the learner, as the agent's loop does, in the pushes ``adapt`` makes; returns the rows the
    buffer kept."""
    table = read_table(data, channels=slot.channels).select(slot.channels)
    rows = table.rows if rows is None else rows
    for a in range(0, rows, PUSH_ROWS):
        ts = table.timestamps[a : min(a + PUSH_ROWS, rows)]
        values = table.values[a : min(a + PUSH_ROWS, rows)]
        batch = slot.pipeline.push(ts, values)
        slot.episodes.update(batch, time.time())
        learner.record(ts, values, batch, fault=not np.isfinite(values).all(),
                       open_episode=slot.episodes.open_episode is not None)
    learner.flush()
    return learner.buffer.stats().rows
