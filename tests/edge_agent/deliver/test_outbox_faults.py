"""The outbox on a failing disk: it degrades to memory, never stops, and recovers by itself.

Real faults only: a small tmpfs filled to the last byte (and freed again), a write lock held
by a second SQLite connection, pages of the live file overwritten with garbage, a read-only
mount and a directory the agent's user may not write.
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from broker import Mosquitto, Subscriber
from deliver_support import MACHINE, UplinkFactory, make_event, mqtt_config, wait_until
from disk import fill

from edge_agent.deliver import store
from edge_agent.deliver.config import OutboxConfig
from edge_agent.deliver.outbox import Outbox, OutboxError, Pending
from edge_agent.events import SEVERITY_CRITICAL, SEVERITY_INFO, SEVERITY_WARNING, Event

RETRY_S = 0.2  # cfg.retry_s in these tests: seconds, not the default 5
BUSY_S = 0.05  # store.BUSY_TIMEOUT_S in these tests: a held lock fails the write quickly
MAX_ADDS_TO_FAIL = 200  # a full disk must refuse a write long before this
PAGE_BYTES = 4096  # SQLite's default page size
NOBODY = 65534  # the unprivileged user the permission test runs as when we are root
EVENTS = f"edge/{MACHINE}/events"
DELIVERY_WAIT_S = 15.0


def stored(path: Path) -> tuple[list[str], list[str]]:
    """Event ids in the outbox table (seq order) and in the history (insertion order), read
    through a second connection: what is on disk, not in the outbox's memory."""
    with closing(sqlite3.connect(path)) as conn:
        queue = [r[0] for r in conn.execute("SELECT event_id FROM outbox ORDER BY seq")]
        history = [r[0] for r in conn.execute("SELECT event_id FROM history ORDER BY id")]
    return queue, history


def walk(box: Outbox, batch: int) -> list[Pending]:
    """Read everything pending the way the uplink does: batches after the last seq sent."""
    out: list[Pending] = []
    while rows := box.pending(batch, after_seq=out[-1].seq if out else 0):
        out += rows
    return out


def assert_in_order(rows: list[Pending], events: list[Event]) -> None:
    assert [r.event_id for r in rows] == [e.id for e in events]
    assert [r.payload for r in rows] == [e.to_json() for e in events]
    assert all(a.seq < b.seq for a, b in itertools.pairwise(rows))


def wait_retry_and_maintain(box: Outbox) -> None:
    time.sleep(RETRY_S * 1.5)
    box.maintain()


def test_disk_full_mid_run_holds_events_and_recovers(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = small_disk / "events.db"
    box = Outbox(path, OutboxConfig(retry_s=RETRY_S), deliver=True)
    try:
        before = [make_event(n) for n in range(5)]
        for e in before:
            box.add(e)
        assert box.health()["degraded"] is False
        filler = fill(small_disk)
        refused: list[Event] = []
        with caplog.at_level(logging.INFO, "edge_agent.deliver.outbox"):
            while not box.health()["degraded"]:  # the WAL may still have room for a frame
                assert len(refused) < MAX_ADDS_TO_FAIL, "the full disk never refused a write"
                refused.append(make_event(10 + len(refused)))
                box.add(refused[-1])  # never raises
            more = [make_event(500 + n) for n in range(8)]
            for e in more:
                box.add(e)
            everything = before + refused + more
            assert_in_order(box.pending(1000), everything)
            assert_in_order(walk(box, 3), everything)  # across the disk/memory boundary too
            health = box.health()
            assert health["held"] >= len(more) + 1
            assert health["store_errors"] >= 1
            assert "SQLITE_FULL" in str(health["last_error"])
            # The uplink delivers while the disk is full: one row on disk, two in memory.
            acked = [before[1], more[0], more[3]]
            seq_of = {r.event_id: r.seq for r in box.pending(1000)}
            box.ack_many([seq_of[e.id] for e in acked] + [10**9])  # unknown seq: no-op
            waiting = [e for e in everything if e not in acked]
            assert [r.event_id for r in box.pending(1000)] == [e.id for e in waiting]
            assert box.depth() == len(waiting)
            assert box.pending_bytes() == sum(len(e.to_json()) for e in waiting)
            wait_retry_and_maintain(box)  # still full: still degraded, nothing raised
            held = box.health()
            assert held["degraded"] is True
            assert held["store_errors"] >= 2
            filler.unlink()
            box.maintain()  # not yet due: costs nothing, changes nothing
            assert box.health()["degraded"] is True
            wait_retry_and_maintain(box)
        health = box.health()
        assert health["degraded"] is False
        assert health["held"] == 0
        assert health["memory_dropped"] == 0
        assert box.dropped() == 0
        queue, history = stored(path)
        assert queue == [e.id for e in waiting]
        assert history == [e.id for e in everything]
        states = {s.event_id: s.delivery for s in box.recent(100)}
        assert {e.id for e in acked} == {k for k, v in states.items() if v == "delivered"}
        assert box.depth() == len(waiting)
        assert box.pending_bytes() == sum(len(e.to_json()) for e in waiting)
        recovered = [r for r in caplog.records if "works normally again" in r.getMessage()]
        assert len(recovered) == 1
        assert f"{held['held']} event(s) held in memory" in recovered[0].getMessage()
        last = make_event(900)
        box.add(last)  # healthy again: straight to disk
        assert stored(path)[0][-1] == last.id
    finally:
        box.close()


def test_alerts_go_out_while_the_disk_is_full(
    small_disk: Path, mosquitto: Mosquitto, start_uplink: UplinkFactory
) -> None:
    path = small_disk / "events.db"
    box = Outbox(path, OutboxConfig(retry_s=RETRY_S), deliver=True)
    uplink = None
    try:
        filler = fill(small_disk)
        events: list[Event] = []
        with Subscriber(mosquitto.port, EVENTS) as sub:
            uplink = start_uplink(mqtt_config(mosquitto.port), box)
            while len(events) < MAX_ADDS_TO_FAIL and not box.health()["degraded"]:
                events.append(make_event(len(events)))
                box.add(events[-1])
                uplink.wake()
            for n in range(5):
                events.append(make_event(100 + n))
                box.add(events[-1])
                uplink.wake()
            msgs = sub.wait_for(len(events), DELIVERY_WAIT_S)
            wait_until(lambda: box.depth() == 0, DELIVERY_WAIT_S, "every PUBACK")
        assert [m.json()["id"] for m in msgs] == [e.id for e in events]
        health = box.health()
        assert health["degraded"] is True  # delivered, but their history waits for the disk
        assert health["held"] >= 5
        filler.unlink()
        wait_retry_and_maintain(box)
        assert box.health()["degraded"] is False
        assert stored(path) == ([], [e.id for e in events])
        assert {s.delivery for s in box.recent(100)} == {"delivered"}
    finally:
        if uplink is not None:
            uplink.stop(0.0)
        box.close()


@pytest.fixture
def quick_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock held by another connection fails a write after BUSY_S, not 10 s."""
    monkeypatch.setattr(store, "BUSY_TIMEOUT_S", BUSY_S)


@contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Another connection holds the file's write lock (BEGIN EXCLUSIVE) during the block."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")


@pytest.mark.usefixtures("quick_busy")
def test_memory_bound_drops_lowest_severity_oldest_logged_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.db"
    box = Outbox(path, OutboxConfig(memory_events=4, retry_s=RETRY_S), deliver=True)
    sev = {"A": SEVERITY_CRITICAL, "B": SEVERITY_INFO, "C": SEVERITY_WARNING,
           "D": SEVERITY_INFO, "E": SEVERITY_CRITICAL, "F": SEVERITY_CRITICAL,
           "G": SEVERITY_WARNING}
    events = {name: make_event(n, severity=s) for n, (name, s) in enumerate(sev.items())}
    try:
        with write_lock(path):  # the disk refuses writes
            with caplog.at_level(logging.ERROR, "edge_agent.deliver.outbox"):
                for e in events.values():
                    box.add(e)
            # B and D (info) go first, then C, the older warning.
            assert [r.event_id for r in box.pending(10)] == [events[k].id for k in "AEFG"]
            drops = [r for r in caplog.records if "memory full" in r.getMessage()]
            assert len(drops) == 3
            for record, name in zip(drops, "BDC", strict=True):
                assert record.levelno == logging.ERROR
                assert events[name].to_json().decode() in record.getMessage()  # all of it
            health = box.health()
            assert (health["memory_dropped"], health["held"], box.dropped()) == (3, 4, 3)
        wait_retry_and_maintain(box)
        assert box.health()["degraded"] is False
        assert stored(path)[0] == [events[k].id for k in "AEFG"]
    finally:
        box.close()
    again = Outbox(path, OutboxConfig(), deliver=True)
    assert again.dropped() == 3  # the memory drops reached the persistent counter
    again.close()


@pytest.mark.usefixtures("quick_busy")
def test_lock_held_past_busy_timeout_holds_events_until_released(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    box = Outbox(path, OutboxConfig(retry_s=RETRY_S), deliver=True)
    first = make_event(0)
    held = [make_event(n) for n in range(1, 6)]
    try:
        box.add(first)
        with write_lock(path):
            for e in held:
                box.add(e)  # never raises
            health = box.health()
            assert health["degraded"] is True
            assert health["held"] == len(held)
            assert "SQLITE_BUSY" in str(health["last_error"])
            assert_in_order(box.pending(10), [first, *held])
            wait_retry_and_maintain(box)  # still locked: the retry fails, nothing raises
            assert box.health()["held"] == len(held)
            assert stored(path)[0] == [first.id]
        wait_retry_and_maintain(box)
        assert box.health()["degraded"] is False
        assert stored(path) == ([e.id for e in [first, *held]],) * 2
        assert_in_order(box.pending(10), [first, *held])
    finally:
        box.close()


@pytest.mark.usefixtures("quick_busy")
def test_start_with_the_file_locked_numbers_held_events_after_the_files(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    box = Outbox(path, OutboxConfig(), deliver=True)
    old = [make_event(n) for n in range(3)]
    for e in old:
        box.add(e)
    box.close()
    new = [make_event(100 + n) for n in range(2)]
    with write_lock(path):  # not even a read-only exclusive open gets in
        box = Outbox(path, OutboxConfig(retry_s=RETRY_S), deliver=True)
    try:
        with write_lock(path):
            for e in new:
                box.add(e)
            # The file's seqs are unknown: held events wait rather than take a seq it uses.
            assert box.pending(10) == []
            assert box.depth() == len(new)
            assert box.health()["degraded"] is True
        wait_retry_and_maintain(box)
        assert box.health()["degraded"] is False
        assert_in_order(box.pending(10), old + new)
        assert stored(path) == ([e.id for e in old + new],) * 2
    finally:
        box.close()


@pytest.mark.usefixtures("quick_busy")
def test_without_delivery_held_events_reach_the_history(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    box = Outbox(path, OutboxConfig(retry_s=RETRY_S), deliver=False)
    events = [make_event(n) for n in range(3)]
    try:
        with write_lock(path):
            for e in events:
                box.add(e)
            assert box.health()["held"] == len(events)
            assert box.pending(10) == []
            assert [s.event_id for s in box.recent()] == [e.id for e in reversed(events)]
        wait_retry_and_maintain(box)
        assert box.health()["held"] == 0
        assert stored(path) == ([], [e.id for e in events])
        assert [s.delivery for s in box.recent()] == ["local"] * len(events)
    finally:
        box.close()


def _damage(path: Path) -> None:
    """Checkpoint the WAL into the file through another connection, then overwrite every
    page but the first with garbage through another file handle (a torn SD card write)."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(PAGE_BYTES)
        f.write(b"\x55" * (size - PAGE_BYTES))


@pytest.mark.parametrize("first_op", ["add", "pending"])
def test_corrupted_while_open_is_moved_aside_and_a_fresh_outbox_continues(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, first_op: str
) -> None:
    path = tmp_path / "events.db"
    box = Outbox(path, OutboxConfig(), deliver=True)
    try:
        old = [make_event(n) for n in range(60)]
        for e in old:
            box.add(e)
        box.ack(box.pending(1)[0].seq)
        _damage(path)
        damaged = path.read_bytes()
        new = [make_event(100 + n) for n in range(3)]
        with caplog.at_level(logging.ERROR, "edge_agent.deliver.outbox"):
            if first_op == "add":
                box.add(new[0])
            else:
                assert box.pending(10) == []
                box.add(new[0])
        assert "moved it aside" in caplog.text
        assert f"{len(old) - 1} undelivered event(s)" in caplog.text
        moved = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name
                 and not p.name.endswith(("-wal", "-shm"))]
        assert len(moved) == 1
        assert moved[0].read_bytes() == damaged  # kept for recovery, not deleted
        for e in new[1:]:
            box.add(e)
        rows = box.pending(10)
        assert_in_order(rows, new)
        assert rows[0].seq > len(old)  # seqs go on: the uplink's "after" stays right
        health = box.health()
        assert health["quarantined"] == 1
        assert health["degraded"] is False
        assert stored(path) == ([e.id for e in new],) * 2
    finally:
        box.close()


@pytest.mark.parametrize("existing", [True, False], ids=["with-events", "no-outbox-yet"])
def test_start_on_a_full_disk_is_degraded_then_recovers(
    small_disk: Path, existing: bool
) -> None:
    path = small_disk / "events.db"
    old = [make_event(n) for n in range(4)] if existing else []
    if existing:
        box = Outbox(path, OutboxConfig(), deliver=True)
        for e in old:
            box.add(e)
        box.close()
    filler = fill(small_disk)
    box = Outbox(path, OutboxConfig(retry_s=RETRY_S), deliver=True)  # does not raise
    try:
        assert box.health()["degraded"] is True
        assert_in_order(box.pending(10), old)  # the events on disk still go out
        new = [make_event(100 + n) for n in range(3)]
        for e in new:
            box.add(e)
        assert_in_order(walk(box, 2), old + new)
        acked = [*old[:1], new[1]]
        seq_of = {r.event_id: r.seq for r in box.pending(10)}
        box.ack_many(seq_of[e.id] for e in acked)
        waiting = [e for e in old + new if e not in acked]
        assert box.depth() == len(waiting)
        wait_retry_and_maintain(box)
        assert box.health()["degraded"] is True
        filler.unlink()
        wait_retry_and_maintain(box)
        assert box.health()["degraded"] is False
        assert stored(path) == ([e.id for e in waiting], [e.id for e in old + new])
        assert_in_order(box.pending(10), waiting)
    finally:
        box.close()


def test_read_only_file_system_at_start_is_an_error(small_disk: Path) -> None:
    path = small_disk / "events.db"
    Outbox(path, OutboxConfig(), deliver=True).close()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for target in (path, small_disk / "new.db"):
        with pytest.raises(OutboxError, match=str(target)):
            Outbox(target, OutboxConfig(), deliver=True)


def _open_as_nobody(target: Path) -> str:
    """Open an outbox at ``target`` in a forked child that has dropped root for an
    unprivileged user (no exec: the agent's Python may live where that user cannot go)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one line, never return into pytest
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                Outbox(target, OutboxConfig(), deliver=True).close()
                outcome = "opened"
            except OutboxError as err:
                outcome = f"OutboxError: {err}"
            os.write(write_end, outcome.encode())
        except BaseException as err:
            os.write(write_end, repr(err).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        outcome = f.read().decode()
    os.waitpid(pid, 0)
    return outcome


def test_permission_denied_at_start_is_an_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        target = tmp_path / "state" / "events.db"
        target.parent.mkdir(mode=0o555)
        with pytest.raises(OutboxError, match=str(target)):
            Outbox(target, OutboxConfig(), deliver=True)
        return
    # root may write anywhere: try it as an unprivileged user, in a directory it can reach.
    with tempfile.TemporaryDirectory() as top:
        os.chmod(top, 0o755)
        target = Path(top) / "state" / "events.db"
        target.parent.mkdir(mode=0o555)
        outcome = _open_as_nobody(target)
        assert not target.exists()
    assert outcome.startswith(f"OutboxError: {target}: cannot open the event outbox"), outcome
