"""The SQLite outbox: order, acks, the size cap, history, crashes and corrupt files."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from deliver_support import make_event

from edge_agent.deliver.config import OutboxConfig
from edge_agent.deliver.outbox import Outbox, OutboxError, format_events, read_recent
from edge_agent.errors import EdgeAnomalyError
from edge_agent.events import SEVERITY_CRITICAL, SEVERITY_INFO, SEVERITY_WARNING, ChannelShare

ROOT = Path(__file__).resolve().parents[3]
CHILD = Path(__file__).with_name("child_outbox.py")
KILL_AFTER_EVENTS = 300
CHILD_MAX_EVENTS = 1_000_000
PAGE_BYTES = 4096  # SQLite's default page size


def test_pending_in_order_and_ack_deletes(outbox: Outbox) -> None:
    events = [make_event(n) for n in range(5)]
    for e in events:
        outbox.add(e)
    rows = outbox.pending(10)
    assert [r.event_id for r in rows] == [e.id for e in events]
    assert [r.payload for r in rows] == [e.to_json() for e in events]
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)
    assert [r.event_id for r in outbox.pending(2, after_seq=rows[1].seq)] == [
        events[2].id, events[3].id,
    ]
    outbox.ack(rows[0].seq)
    outbox.ack_many([rows[2].seq, rows[2].seq])  # a repeated ack is harmless
    assert outbox.depth() == 3
    assert [r.event_id for r in outbox.pending(10)] == [events[1].id, events[3].id, events[4].id]
    states = {s.event_id: s.delivery for s in outbox.recent()}
    assert states[events[0].id] == "delivered"
    assert states[events[1].id] == "pending"
    assert outbox.pending_bytes() == sum(len(r.payload) for r in outbox.pending(10))


def test_seq_never_reused_after_newest_is_acked(outbox: Outbox) -> None:
    outbox.add(make_event(1))
    first = outbox.pending(1)[0]
    outbox.ack(first.seq)
    outbox.add(make_event(2))
    # The uplink asks for "after the last seq I sent"; a reused seq would be skipped.
    assert [r.seq for r in outbox.pending(5, after_seq=first.seq)] == [first.seq + 1]


def test_without_delivery_events_only_go_to_history(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "events.db", OutboxConfig(), deliver=False)
    box.add(make_event(1))
    assert box.depth() == 0
    assert box.pending(10) == []
    assert [s.delivery for s in box.recent()] == ["local"]
    box.close()


def test_size_cap_drops_lowest_severity_oldest_first_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Events 10..99 serialise to the same length, so the cap holds exactly four.
    size = len(make_event(10).to_json())
    assert all(len(make_event(n).to_json()) == size for n in (11, 42, 99))
    cfg = OutboxConfig(max_mb=4.5 * size / (1 << 20))
    path = tmp_path / "events.db"
    box = Outbox(path, cfg, deliver=True)
    sev = {"A": SEVERITY_CRITICAL, "B": SEVERITY_INFO, "C": SEVERITY_WARNING,
           "D": SEVERITY_INFO, "E": SEVERITY_CRITICAL, "F": SEVERITY_CRITICAL,
           "G": SEVERITY_WARNING, "H": SEVERITY_INFO}
    ids = {}
    with caplog.at_level(logging.WARNING, "edge_agent.deliver.outbox"):
        for n, (name, s) in enumerate(sev.items(), start=10):
            event = make_event(n, severity=s)
            ids[event.id] = name
            box.add(event)
    # B and D (info) go first, then C (the older warning), then H itself (info again).
    assert [ids[r.event_id] for r in box.pending(10)] == ["A", "E", "F", "G"]
    assert box.dropped() == 4
    assert box.pending_bytes() <= cfg.max_mb * (1 << 20)
    assert "cap" in caplog.text  # logged once, the repeats throttled
    assert len([r for r in caplog.records if "cap" in r.getMessage()]) == 1
    box.close()
    again = Outbox(path, cfg, deliver=True)
    assert again.dropped() == 4
    assert again.depth() == 4
    states = {ids[s.event_id]: s.delivery for s in again.recent()}
    assert states == {"A": "pending", "B": "dropped", "C": "dropped", "D": "dropped",
                      "E": "pending", "F": "pending", "G": "pending", "H": "dropped"}
    again.close()


def test_history_keeps_the_newest_and_filters_by_kind(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "events.db", OutboxConfig(history_events=5), deliver=True)
    events = [make_event(n, kind="sensor_fault" if n % 2 else "anomaly") for n in range(12)]
    for e in events:
        box.add(e)
    recent = box.recent(50)
    assert [s.event_id for s in recent] == [e.id for e in reversed(events[-5:])]
    assert box.depth() == 12  # trimming history never touches undelivered events
    faults = box.recent(2, kind="sensor_fault")
    assert [s.event_id for s in faults] == [events[11].id, events[9].id]
    box.close()


def test_crash_keeps_every_acknowledged_event(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), str(CHILD_MAX_EVENTS)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    promised = []
    for line in proc.stdout:
        promised.append(line.strip())
        if len(promised) >= KILL_AFTER_EVENTS:
            proc.send_signal(signal.SIGKILL)  # mid-way: the child is inside add() right now
            break
    promised += [line.strip() for line in proc.stdout]  # printed just before the kill
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    box = Outbox(path, OutboxConfig(), deliver=True)
    rows = box.pending(CHILD_MAX_EVENTS)
    stored = [r.event_id for r in rows]
    assert stored[: len(promised)] == promised  # all there, in order
    assert len(stored) - len(promised) <= 1  # at most the add the kill interrupted
    assert all(json.loads(r.payload)["id"] == r.event_id for r in rows)  # none half-written
    box.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _only_corrupt_copy(path: Path) -> Path:
    moved = [p for p in path.parent.iterdir() if p.name.startswith(f"{path.name}.corrupt-")
             and not p.name.endswith(("-wal", "-shm"))]
    assert len(moved) == 1, moved
    return moved[0]


def test_not_a_database_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "events.db"
    junk = b"this is no sqlite file " * 200
    path.write_bytes(junk)
    with caplog.at_level(logging.ERROR, "edge_agent.deliver.outbox"):
        box = Outbox(path, OutboxConfig(), deliver=True)
    assert _only_corrupt_copy(path).read_bytes() == junk  # kept for recovery, not deleted
    assert str(path) in caplog.text
    assert "moved it aside" in caplog.text
    box.add(make_event(1))
    assert box.depth() == 1
    box.close()


def test_damaged_pages_are_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    box = Outbox(path, OutboxConfig(), deliver=True)
    for n in range(200):
        box.add(make_event(n))
    box.close()  # checkpoints the WAL into the main file
    data = bytearray(path.read_bytes())
    data[PAGE_BYTES : 3 * PAGE_BYTES] = b"\x55" * (2 * PAGE_BYTES)  # a torn write
    path.write_bytes(bytes(data))
    box = Outbox(path, OutboxConfig(), deliver=True)
    assert box.depth() == 0
    assert _only_corrupt_copy(path).read_bytes() == bytes(data)
    box.close()


def test_newer_schema_is_refused_not_discarded(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    Outbox(path, OutboxConfig(), deliver=True).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    with pytest.raises(OutboxError, match="newer agent") as info:
        Outbox(path, OutboxConfig(), deliver=True)
    assert str(path) in str(info.value)
    assert isinstance(info.value, EdgeAnomalyError)
    assert [p.name for p in tmp_path.iterdir() if "corrupt" in p.name] == []


def test_unopenable_path_is_an_error_not_corruption(tmp_path: Path) -> None:
    target = tmp_path / "is-a-directory"
    target.mkdir()
    with pytest.raises(OutboxError, match=str(target)):
        Outbox(target, OutboxConfig(), deliver=True)
    assert target.is_dir()


def test_read_recent_beside_a_running_outbox_is_read_only(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with pytest.raises(OutboxError, match="no event outbox"):
        read_recent(path)
    box = Outbox(path, OutboxConfig(), deliver=True)  # the daemon keeps it open
    events = [make_event(n) for n in range(3)]
    for e in events:
        box.add(e)
    box.ack(box.pending(1)[0].seq)
    got = read_recent(path, limit=2)
    assert [(s.event_id, s.delivery) for s in got] == [
        (events[2].id, "pending"), (events[1].id, "pending"),
    ]
    assert read_recent(path)[-1].delivery == "delivered"
    box.close()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"no database" * 100)
    with pytest.raises(OutboxError, match=str(junk)):
        read_recent(junk)
    assert junk.read_bytes() == b"no database" * 100  # a reader never moves files


def test_concurrent_add_and_ack_keep_order(outbox: Outbox) -> None:
    count = 300
    added: list[str] = []
    delivered: list[str] = []

    def produce() -> None:
        for n in range(count):
            e = make_event(n)
            outbox.add(e)
            added.append(e.id)

    writer = threading.Thread(target=produce)
    writer.start()
    last = 0
    while writer.is_alive() or outbox.depth():
        rows = outbox.pending(16, after_seq=last)
        if rows:
            last = rows[-1].seq
            delivered += [r.event_id for r in rows]
            outbox.ack_many(r.seq for r in rows)
    writer.join()
    assert delivered == added
    assert outbox.depth() == 0
    assert outbox.pending_bytes() == 0


def test_format_events_table_and_json(outbox: Outbox) -> None:
    anomaly = make_event(
        1, top_channels=(ChannelShare("bearing_temp", 0.61), ChannelShare("current", 0.2)),
        peak_score=3.21, p_anomaly=0.97,
    )
    fault = make_event(2, kind="sensor_fault", channel="flow", reason="stuck")
    outbox.add(anomaly)
    outbox.add(fault)
    outbox.ack(outbox.pending(1)[0].seq)
    rows = outbox.recent()
    table = format_events(rows, as_json=False).splitlines()
    assert table[0].split()[:4] == ["SAMPLE", "TIME", "(UTC)", "KIND"]
    assert "sensor_fault" in table[1]
    assert "flow stuck" in table[1]
    assert "pending" in table[1]
    assert "bearing_temp 61%" in table[2]
    assert "p=0.97" in table[2]
    assert "delivered" in table[2]
    assert "ep000001" in table[2]
    lines = [json.loads(x) for x in format_events(rows, as_json=True).splitlines()]
    assert [(d["id"], d["delivery"]) for d in lines] == [
        (fault.id, "pending"), (anomaly.id, "delivered"),
    ]
    assert format_events([], as_json=False) == "no events stored"
