"""The event outbox: every event is committed to SQLite here before anything is sent.

Sits between the end of the pipeline and the MQTT uplink (``edge_agent.deliver.mqtt``). The
pipeline thread calls :meth:`Outbox.add`, which returns only once the event is on disk
(WAL, ``synchronous=FULL``), so an event the pipeline has handed over survives a crash or a
power cut. The uplink thread reads :meth:`Outbox.pending` in ``seq`` order and deletes a row
with :meth:`Outbox.ack` only after the broker's PUBACK. Undelivered events are capped in
bytes so that a long broker outage cannot fill the SD card: the lowest severity, oldest
events go first, and every drop is counted in the file itself. A ``history`` table keeps the
newest events (delivered or not) for ``python -m edge_agent events``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.deliver.config import OutboxConfig
from edge_agent.deliver.listing import StoredEvent, delivery_state, format_events
from edge_agent.deliver.store import SCHEMA_VERSION, OutboxError, open_readonly, open_store
from edge_agent.events import Event
from edge_agent.logs import Throttle

__all__ = [
    "SCHEMA_VERSION", "Outbox", "OutboxError", "Pending", "StoredEvent", "format_events",
    "read_recent",
]

log = logging.getLogger("edge_agent.deliver.outbox")

BYTES_PER_MIB = 1 << 20
DROP_LOG_EVERY_S = 300.0  # one warning per 5 min while the cap keeps biting


@dataclass(frozen=True)
class Pending:
    """An event waiting for its PUBACK: ``payload`` is the exact bytes to publish."""

    seq: int
    event_id: str
    payload: bytes


class Outbox:
    """Durable FIFO of undelivered events plus a bounded history, in one SQLite file.

    One connection shared by the pipeline and uplink threads behind a lock: SQLite serialises
    writers anyway, and a single connection keeps ``seq`` order equal to commit order.
    """

    def __init__(self, path: Path, cfg: OutboxConfig, *, deliver: bool) -> None:
        self.path = path
        self._cfg = cfg
        self._deliver = deliver
        self._cap_bytes = int(cfg.max_mb * BYTES_PER_MIB)
        self._throttle = Throttle(log, DROP_LOG_EVERY_S)
        self._lock = threading.Lock()
        try:
            self._conn = open_store(path)
        except sqlite3.Error as err:
            raise OutboxError(f"{path}: cannot open the event outbox: {err}") from err
        self._sync_full = True
        row = self._conn.execute("SELECT COALESCE(SUM(length(payload)), 0) FROM outbox").fetchone()
        self._bytes = int(row[0])
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
        self._dropped = int(row[0])

    # -- pipeline thread ------------------------------------------------------------------

    def add(self, event: Event) -> None:
        """Commit ``event`` (history always, outbox when delivering); durable on return."""
        payload = event.to_json()
        created = event.created or time.time()
        with self._lock:
            self._set_sync(full=True)
            conn = self._conn
            total = self._bytes
            try:
                conn.execute("BEGIN IMMEDIATE")
                seq: int | None = None
                if self._deliver:
                    cur = conn.execute(
                        "INSERT INTO outbox (event_id, severity, payload) VALUES (?, ?, ?)",
                        (event.id, event.severity, payload),
                    )
                    seq = cur.lastrowid
                    total += len(payload)
                cur = conn.execute(
                    "INSERT INTO history (seq, event_id, kind, state, episode, severity, created,"
                    " payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, event.id, event.kind, event.state, event.episode, event.severity,
                     created, payload),
                )
                newest = int(cur.lastrowid or 0)
                conn.execute(
                    "DELETE FROM history WHERE id <= ?", (newest - self._cfg.history_events,)
                )
                dropped: list[tuple[int, int]] = []
                if total > self._cap_bytes:
                    dropped = self._drop_over_cap(total - self._cap_bytes)
                    total -= sum(size for _, size in dropped)
                conn.execute("COMMIT")
            except sqlite3.Error as err:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise OutboxError(f"{self.path}: cannot store event {event.id}: {err}") from err
            self._bytes = total
            self._dropped += len(dropped)
        if dropped:
            self._throttle.warning(
                "cap",
                "outbox over its %g MiB cap (broker unreachable?): dropped %d undelivered "
                "event(s), lowest severity and oldest first; %d dropped in all",
                self._cfg.max_mb, len(dropped), self._dropped,
            )

    def _drop_over_cap(self, excess: int) -> list[tuple[int, int]]:
        """Delete the lowest-severity, oldest rows until ``excess`` bytes are freed (caller
        holds the lock and an open transaction)."""
        victims: list[tuple[int, int]] = []
        freed = 0
        rows = self._conn.execute(
            "SELECT seq, length(payload) FROM outbox ORDER BY severity, seq"
        ).fetchall()
        for seq, size in rows:
            if freed >= excess:
                break
            victims.append((int(seq), int(size)))
            freed += int(size)
        seqs = [(seq,) for seq, _ in victims]
        self._conn.executemany("DELETE FROM outbox WHERE seq = ?", seqs)
        self._conn.executemany("UPDATE history SET dropped = 1 WHERE seq = ?", seqs)
        self._conn.execute(
            "UPDATE meta SET value = value + ? WHERE key = 'dropped'", (len(victims),)
        )
        return victims

    # -- uplink thread --------------------------------------------------------------------

    def pending(self, limit: int, after_seq: int = 0) -> list[Pending]:
        """Up to ``limit`` undelivered events with ``seq > after_seq``, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, event_id, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [Pending(int(s), str(e), bytes(p)) for s, e, p in rows]

    def ack(self, seq: int) -> None:
        """The broker has the event: delete it (a no-op if the size cap dropped it)."""
        self.ack_many((seq,))

    def ack_many(self, seqs: Iterable[int]) -> None:
        """Delete several acknowledged events in one transaction (one fsync, not one each)."""
        params = [(s,) for s in seqs]
        if not params:
            return
        with self._lock:
            # A lost ack only means a duplicate after a power cut, which consumers drop by
            # id; NORMAL spares the SD card an fsync per PUBACK.
            self._set_sync(full=False)
            conn = self._conn
            freed = 0
            try:
                conn.execute("BEGIN IMMEDIATE")
                for p in params:
                    for (size,) in conn.execute(
                        "DELETE FROM outbox WHERE seq = ? RETURNING length(payload)", p
                    ).fetchall():
                        freed += int(size)
                conn.execute("COMMIT")
            except sqlite3.Error as err:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise OutboxError(f"{self.path}: cannot mark events delivered: {err}") from err
            self._bytes -= freed

    # -- readers --------------------------------------------------------------------------

    def depth(self) -> int:
        """Events waiting for a PUBACK."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def pending_bytes(self) -> int:
        """Payload bytes waiting for a PUBACK (what the size cap counts)."""
        with self._lock:
            return self._bytes

    def dropped(self) -> int:
        """Undelivered events dropped by the size cap since the file was created."""
        with self._lock:
            return self._dropped

    def recent(self, limit: int = 50, kind: str | None = None) -> list[StoredEvent]:
        """The newest events from the history, newest first, with their delivery state."""
        with self._lock:
            return _recent(self._conn, limit, kind)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _set_sync(self, *, full: bool) -> None:
        if full != self._sync_full:
            self._conn.execute(f"PRAGMA synchronous = {'FULL' if full else 'NORMAL'}")
            self._sync_full = full


_RECENT_SQL = (
    "SELECT h.event_id, h.kind, h.state, h.episode, h.severity, h.created, h.payload,"
    " h.seq IS NOT NULL, h.dropped, EXISTS (SELECT 1 FROM outbox o WHERE o.seq = h.seq)"
    " FROM history h WHERE ? IS NULL OR h.kind = ? ORDER BY h.id DESC LIMIT ?"
)


def _recent(conn: sqlite3.Connection, limit: int, kind: str | None) -> list[StoredEvent]:
    rows = conn.execute(_RECENT_SQL, (kind, kind, limit)).fetchall()
    return [
        StoredEvent(
            event_id=r[0], kind=r[1], state=r[2], episode=r[3], severity=int(r[4]),
            created=float(r[5]), payload=bytes(r[6]),
            delivery=delivery_state(queued=bool(r[7]), dropped=bool(r[8]), waiting=bool(r[9])),
        )
        for r in rows
    ]


def read_recent(path: Path, limit: int = 50, kind: str | None = None) -> list[StoredEvent]:
    """:meth:`Outbox.recent` for ``python -m edge_agent events`` beside a running daemon:
    read-only, so it never creates, migrates or moves the daemon's file."""
    try:
        conn = open_readonly(path)
        try:
            return _recent(conn, limit, kind)
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise OutboxError(f"{path}: cannot read stored events: {err}") from err
