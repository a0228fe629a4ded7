"""The agent's learner with real parts: a real bundle and pipeline, a real SQLite outbox, real
keys. A signed round is answered once with a delta the desk's decoder accepts; rounds it cannot
answer are refused with a reason, once; a round waits for windows; training runs at the
lowest priority in its own thread."""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bundles import resigned_copy
from learn_support import MACHINE, agent_config, announcement, feed, open_slot, signed
from prometheus_client import CollectorRegistry

from edge_agent.deliver.config import OutboxConfig
from edge_agent.deliver.outbox import Outbox, Pending
from edge_agent.learn.bundle_weights import load_train_weights
from edge_agent.learn.delta import decode_delta
from edge_agent.learn.learner import Learner
from edge_agent.learn.report import DELTA_TOPIC, REPORT_TOPIC, LearnMetrics
from edge_agent.learn.residual import ResidualStore
from edge_agent.learn.round_log import RoundLog
from edge_agent.model_slot import ModelSlot

FEED_ROWS = 4000
LONG_ROUND_EPOCHS = 1000  # the most a round may ask: still training when the agent stops
STOP_AFTER_S = 2.0
STOP_WITHIN_S = 15.0


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "events.db", OutboxConfig(), deliver=True)
    yield box
    box.close()


def make_learner(tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path, outbox: Outbox,
                 **learn: object) -> tuple[Learner, ModelSlot]:
    cfg = agent_config(tmp_path, bundle, keys, sim_csv, **learn)
    learner = Learner(cfg, outbox, lambda: None, LearnMetrics(CollectorRegistry()))
    slot = open_slot(bundle, keys)
    learner.use_model(slot)
    return learner, slot


def messages(outbox: Outbox, topic: str) -> list[Pending]:
    return [p for p in outbox.pending(1000) if p.topic == topic]


def reports(outbox: Outbox) -> list[dict[str, object]]:
    return [json.loads(p.payload) for p in messages(outbox, REPORT_TOPIC)]


def test_a_signed_round_is_answered_once_with_a_delta_the_desk_accepts(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path, outbox: Outbox
) -> None:
    learner, slot = make_learner(tmp_path, bundle, keys, sim_csv, outbox)
    assert feed(learner, slot, sim_csv, FEED_ROWS) > 1000
    payload = signed(announcement(bundle, keys), keys)
    learner.offer(payload)
    learner.step(0)
    [delta] = messages(outbox, DELTA_TOPIC)
    base = load_train_weights(bundle, slot.manifest)
    assert base is not None
    from edge_agent.learn.device_key import read_private_key

    pub = read_private_key(tmp_path / "keys" / "device.key").public_key()
    opened = decode_delta(delta.payload, public_keys={MACHINE: pub},
                          expected_base_fingerprint=base.fingerprint(), expected_round="r-1",
                          tensor_sizes=base.tensor_sizes)
    assert opened.header.samples >= 50
    assert opened.header.model_version == slot.version
    assert opened.header.k == round(0.05 * base.size)
    [sent] = reports(outbox)
    assert sent["outcome"] == "sent"
    assert sent["delta_bytes"] == len(delta.payload)
    assert RoundLog(tmp_path / "state" / "learn").outcome("r-1") == "sent"
    assert ResidualStore(tmp_path / "state").load(base).any()  # what top-k left out is kept
    # The retained announcement comes again (reconnect, restart): it is not trained again.
    learner.offer(payload)
    learner.step(0)
    again = Learner(agent_config(tmp_path, bundle, keys, sim_csv), outbox, lambda: None,
                    LearnMetrics(CollectorRegistry()))
    again.use_model(slot)
    again.offer(payload)
    again.step(0)
    assert len(messages(outbox, DELTA_TOPIC)) == 1
    assert len(reports(outbox)) == 1


def test_rounds_that_cannot_be_answered_are_refused_once_with_the_reason(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path, outbox: Outbox
) -> None:
    learner, slot = make_learner(tmp_path, bundle, keys, sim_csv, outbox)
    feed(learner, slot, sim_csv, FEED_ROWS)
    other = announcement(bundle, keys, "r-next", base_model_version="some-later-model")
    expired = announcement(bundle, keys, "r-old", issued_at="2020-01-01T00:00:00Z",
                           deadline="2020-01-02T00:00:00Z")
    forged = bytearray(signed(announcement(bundle, keys, "r-forged"), keys))
    forged[-3] ^= 0x20
    for payload in (signed(other, keys), signed(other, keys), bytes(forged)):
        learner.offer(payload)
        learner.step(0)
    learner.offer(signed(expired, keys))
    learner.step(0)
    got = [(r["outcome"], r["round_id"], str(r["reason"])) for r in reports(outbox)]
    assert [g[:2] for g in got] == [("refused", "r-next"), ("refused", None),
                                    ("refused", "r-old")]
    assert "some-later-model" in got[0][2]
    assert "bad_signature" in got[1][2]
    assert "expired" in got[2][2]
    assert not messages(outbox, DELTA_TOPIC)


def test_a_model_not_trainable_on_the_device_refuses_with_its_reason(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path, outbox: Outbox
) -> None:
    old = resigned_copy(bundle, tmp_path / "old", keys / "signing.key", {"learning": None})
    learner, slot = make_learner(tmp_path, old, keys, sim_csv, outbox)
    feed(learner, slot, sim_csv, 1000)
    learner.offer(signed(announcement(bundle, keys), keys))
    learner.step(0)
    [r] = reports(outbox)
    assert r["outcome"] == "refused"
    assert "not trainable on the device" in str(r["reason"])
    assert "no learning section" in str(r["reason"])
    assert RoundLog(tmp_path / "state" / "learn").outcome("r-1") == "refused"


def test_a_round_waits_for_enough_windows(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path, outbox: Outbox
) -> None:
    learner, slot = make_learner(tmp_path, bundle, keys, sim_csv, outbox)
    learner.offer(signed(announcement(bundle, keys, min_windows=400), keys))
    learner.step(0)
    learner.step(0)
    [waiting] = reports(outbox)
    assert waiting["outcome"] == "refused"
    assert "needs 400" in str(waiting["reason"])
    feed(learner, slot, sim_csv, FEED_ROWS)
    learner.step(0)
    assert len(messages(outbox, DELTA_TOPIC)) == 1
    assert reports(outbox)[-1]["outcome"] == "sent"


def test_a_round_stopped_mid_training_is_neither_reported_nor_remembered(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path, outbox: Outbox
) -> None:
    # Its training runs in a child process; the agent's stop ends it. The retained
    # announcement comes back after the restart, so the round must still be open then.
    learner, slot = make_learner(tmp_path, bundle, keys, sim_csv, outbox)
    feed(learner, slot, sim_csv, FEED_ROWS)
    learner.offer(signed(announcement(bundle, keys, epochs=LONG_ROUND_EPOCHS), keys))
    stepping = threading.Thread(target=learner.step, args=(0,))
    stepping.start()
    time.sleep(STOP_AFTER_S)
    learner.stop()
    stepping.join(STOP_WITHIN_S)
    assert not stepping.is_alive()
    assert not messages(outbox, DELTA_TOPIC)
    assert reports(outbox) == []
    assert RoundLog(tmp_path / "state" / "learn").outcome("r-1") is None
    assert not mp.active_children()
