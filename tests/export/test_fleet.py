"""``export fleet`` against a real Mosquitto: the retained status and model reports of the
machines, and ``--clean-chunks`` deleting only the chunks no retained deployment uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from broker import Mosquitto, Subscriber
from publish_support import (
    OLD_VERSION,
    PREFIX,
    WAIT_S,
    FakeGateway,
    deployment_chunks,
    publish,
    retained,
)

from edge_agent.deliver.status import status_payload, will_payload
from edge_agent.ota.protocol import chunk_topic, machine_deployment_topic, parse_chunk_topic
from export.cli import main

ORPHAN_SHA = "ab" * 32  # a file no deployment lists
ORPHAN_CHUNKS = (b"0123456789", b"abcdefghij", b"xyz")


def fleet(port: int, *extra: str) -> int:
    return main(["fleet", "--broker", f"127.0.0.1:{port}", *extra])


def put_retained(port: int, messages: dict[str, bytes]) -> None:
    """Publish retained messages as some other client would, and wait for them to be held."""
    from paho.mqtt.client import Client, MQTTv5
    from paho.mqtt.enums import CallbackAPIVersion

    c = Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for topic, payload in messages.items():
            c.publish(topic, payload, qos=1, retain=True).wait_for_publish(WAIT_S)
    finally:
        c.disconnect()
        c.loop_stop()


def test_fleet_lists_machines_with_link_model_and_update_state(
    mosquitto: Mosquitto, keys: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    a = FakeGateway(mosquitto.port, "press-1", keys / "signing.pub", groups=["line-a"]).start()
    b = FakeGateway(mosquitto.port, "press-2", keys / "signing.pub", groups=["line-b"]).start()
    try:
        b.report("rejected", reason="deployment expired")
        put_retained(mosquitto.port, {
            f"{PREFIX}/press-1/status": status_payload("online", "press-1"),
            f"{PREFIX}/press-2/status": will_payload("press-2"),
        })
        assert fleet(mosquitto.port, "--json") == 0
        doc = json.loads(capsys.readouterr().out)
        rows = {r["machine_id"]: r for r in doc["machines"]}
        assert sorted(rows) == ["press-1", "press-2"]
        assert rows["press-1"]["link"] == "online"
        assert rows["press-1"]["active"] == OLD_VERSION
        assert rows["press-1"]["state"] == "active"
        assert rows["press-1"]["groups"] == ["line-a"]
        assert rows["press-1"]["last_seen"] is not None
        assert rows["press-2"]["link"] == "offline"
        assert rows["press-2"]["link_reason"] == "connection lost"
        assert rows["press-2"]["state"] == "rejected"
        assert rows["press-2"]["reason"] == "deployment expired"
        assert fleet(mosquitto.port) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split() == ["machine", "link", "model", "update", "groups", "last", "seen"]
        assert table[1].split()[:3] == ["press-1", "online", OLD_VERSION]
        assert "line-a" in table[1]
        assert "rejected: deployment expired" in table[2]
    finally:
        a.stop()
        b.stop()


def test_clean_chunks_deletes_only_what_no_deployment_uses(
    mosquitto: Mosquitto, bundle: Path, keys: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert publish(mosquitto.port, bundle, keys, "--machine", "m1", "--no-wait") == 0
    capsys.readouterr()
    used = deployment_chunks(mosquitto.port, "m1", keys / "signing.pub")
    orphans = {chunk_topic(PREFIX, ORPHAN_SHA, i): c for i, c in enumerate(ORPHAN_CHUNKS)}
    put_retained(mosquitto.port, orphans)
    assert fleet(mosquitto.port, "--clean-chunks", "--json") == 0
    cleaned = json.loads(capsys.readouterr().out)["cleaned"]
    assert cleaned == {
        "chunks_deleted": len(ORPHAN_CHUNKS), "files_deleted": 1,
        "bytes_freed": sum(map(len, ORPHAN_CHUNKS)), "chunks_kept": len(used),
    }
    # What a gateway connecting now finds: every chunk the deployment needs, no orphan.
    left = retained(mosquitto.port, f"{PREFIX}/ota/blob/#", len(used))
    assert set(left) == set(used)
    assert all(parse_chunk_topic(PREFIX, t)[0] != ORPHAN_SHA for t in left)  # type: ignore[index]


def test_clean_chunks_refuses_when_a_deployment_cannot_be_read(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str],
) -> None:
    orphan = {chunk_topic(PREFIX, ORPHAN_SHA, 0): ORPHAN_CHUNKS[0]}
    bad = machine_deployment_topic(PREFIX, "m9")
    put_retained(mosquitto.port, {**orphan, bad: b"\0" * 80 + b"not json"})
    assert fleet(mosquitto.port, "--clean-chunks") == 2
    assert f"{bad}: a retained deployment that cannot be read" in capsys.readouterr().err
    with Subscriber(mosquitto.port, f"{PREFIX}/ota/blob/#") as sub:
        assert [m.topic for m in sub.wait_for(1, WAIT_S)] == list(orphan)
