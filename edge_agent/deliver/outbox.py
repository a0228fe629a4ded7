"""The event outbox: every event is committed to SQLite here before anything is sent, and a
failing disk degrades it to memory instead of stopping the agent.

Besides events (:meth:`Outbox.add`, topic ``events``) it carries other messages for the
uplink (:meth:`Outbox.add_message`: update reports on ``model``, later model deltas), each
with its topic relative to ``<prefix>/<machine>/`` and its retain flag, in the same seq
order and with the same guarantees; "event" below means either.

Sits between the end of the pipeline and the MQTT uplink (``edge_agent.deliver.mqtt``). The
pipeline thread calls :meth:`Outbox.add`, which on a healthy disk returns only once the event
is on disk (WAL, ``synchronous=FULL``), so an event the pipeline has handed over survives a
crash or a power cut. The uplink thread reads :meth:`Outbox.pending` in ``seq`` order and
deletes a row with :meth:`Outbox.ack` only after the broker's PUBACK. Undelivered events are
capped in bytes so that a long broker outage cannot fill the SD card: the lowest severity,
oldest events go first, and every drop is counted in the file itself. A ``history`` table
keeps the newest events (delivered or not) for ``python -m edge_agent events``.

Degraded mode: no storage fault raises out of the outbox once it has started. The outbox
numbers events itself (a counter that starts above every seq the file has used), so an
event has the same seq in memory and on disk. When a write fails (disk full, I/O error, a
lock held past the busy timeout) the event is held in memory, at most
``outbox.memory_events`` of them; beyond that the lowest-severity, oldest held event is
dropped, logged at ERROR with its full content, and counted. The uplink still gets held
events (``pending`` merges them with the disk's rows in seq order), so an alert does not wait
for disk space; acknowledgements the disk refuses are remembered too. Writing is retried at
most every ``outbox.retry_s``, from ``add`` and from :meth:`Outbox.maintain`, which the
agent's main loop calls every tick (one attribute read while healthy); when it succeeds the
held events reach the outbox table and the history in order and the recovery is logged. A
read that fails falls back to what is in memory. A database found corrupt at run time is
moved aside as at start, with the number of undelivered events it held, and a fresh one
takes the held events. At start a disk that is full or failing is no reason to stop either:
the file is read in SQLite's exclusive locking mode if it can be (its undelivered events still
go out) or not at all, and retried. Not at all means the seqs the file has used are unknown:
events added meanwhile get provisional seqs and wait, undelivered, until the file can be read
and they are renumbered after its own. Only what an operator must fix (permission denied, a
read-only file system, a newer schema) is an OutboxError. :meth:`Outbox.health` reports the
state.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from edge_agent.deliver import store
from edge_agent.deliver.config import OutboxConfig
from edge_agent.deliver.listing import StoredEvent, delivery_state, format_events
from edge_agent.deliver.schema import SCHEMA_VERSION, read_version
from edge_agent.deliver.store import EventRow, OutboxError, open_readonly
from edge_agent.deliver.topics import EVENTS, relative_topic_problem
from edge_agent.events import SEVERITY_WARNING, Event, new_id
from edge_agent.logs import Throttle

__all__ = [
    "SCHEMA_VERSION", "Outbox", "OutboxError", "OutboxHealth", "Pending", "StoredEvent",
    "format_events", "read_recent",
]

log = logging.getLogger("edge_agent.deliver.outbox")

BYTES_PER_MIB = 1 << 20
LOG_EVERY_S = 300.0  # one line per 5 min while the cap keeps biting or the disk keeps failing
# While degraded, each retry may meet a lock again: it must not stall the main loop for long.
RETRY_BUSY_TIMEOUT_S = 0.5
MS_PER_S = 1000
MESSAGE_KIND = "message"  # the history's kind of a message whose caller names none
LOGGED_PAYLOAD_CHARS = 2000  # what a lost message's log line shows of a text payload
# What failed, for the log and health (`cannot <what>`).
_WRITE = "write to the event outbox"
_READ = "read the event outbox"
_OPEN = "open the event outbox"
_DELETE = "delete acknowledged events from the event outbox"
_CLOSE = "close the event outbox"
_TUNE = "set the event outbox's busy timeout"


@dataclass(frozen=True)
class Pending:
    """An event or message waiting for its PUBACK: ``payload`` is the exact bytes to
    publish, ``topic`` is relative to ``<prefix>/<machine>/``."""

    seq: int
    event_id: str
    payload: bytes
    topic: str = EVENTS
    retain: bool = False


def _shown(row: EventRow) -> str:
    """A payload for a log line: the text of JSON (events), the size of anything else."""
    try:
        text = row.payload.decode()
    except UnicodeDecodeError:
        return f"<{len(row.payload)} bytes for topic {row.topic!r}>"
    if len(text) > LOGGED_PAYLOAD_CHARS:
        return f"{text[:LOGGED_PAYLOAD_CHARS]}... ({len(text)} chars)"
    return text


class OutboxHealth(TypedDict):
    """The outbox's state for metrics and the status heartbeat."""

    degraded: bool  # events or acks wait in memory, or the file cannot be used normally
    held: int  # events in memory, not yet on disk
    store_errors: int  # failed reads, writes and opens since start
    memory_dropped: int  # undelivered events dropped because memory was full (logged)
    history_dropped: int  # delivered events whose history line memory could not keep
    quarantined: int  # corrupt files moved aside since start
    last_error: str | None  # the latest storage fault, one line


@dataclass
class _Held:
    row: EventRow
    acked: bool = False  # delivered while held: it goes to the history only


class Outbox:
    """Durable FIFO of undelivered events plus a bounded history, in one SQLite file, with a
    bounded memory queue for when the disk refuses writes.

    One connection shared by the pipeline and uplink threads behind a lock: SQLite serialises
    writers anyway, and a single connection keeps ``seq`` order equal to commit order.
    """

    def __init__(self, path: Path, cfg: OutboxConfig, *, deliver: bool) -> None:
        self.path = path
        self._cfg = cfg
        self._deliver = deliver
        self._cap_bytes = int(cfg.max_mb * BYTES_PER_MIB)
        self._throttle = Throttle(log, LOG_EVERY_S)
        self._lock = threading.Lock()
        # Everything below is guarded by _lock, except _degraded (see maintain).
        self._conn: sqlite3.Connection | None = None
        self._exclusive = False  # read-only use in exclusive locking mode (no -shm possible)
        self._checked = False  # the current file passed quick_check
        self._sync_full = True
        self._busy_short = False
        self._held: dict[int, _Held] = {}  # by seq, ascending: events not yet on disk
        self._acked_disk: dict[int, int] = {}  # seq -> bytes: acked, row not yet deleted
        # The counters reflect the file (False only while a file could not be read at all
        # since start: seqs are then provisional and held events are not handed out).
        self._known = False
        self._next_seq = 1
        self._disk_rows = 0  # undelivered rows in the file, less those in _acked_disk
        self._disk_bytes = 0
        self._dropped = 0
        self._dropped_on_disk = 0
        self._read_failed = False
        self._degraded = False
        self._closed = False
        self._next_retry = 0.0
        self._spell_start = 0.0
        self._spell_written = 0
        self._spell_dropped = 0
        self._store_errors = 0
        self._memory_dropped = 0
        self._history_dropped = 0
        self._quarantined = 0
        self._last_error: str | None = None
        store.ensure_dir(path)
        with self._lock:
            self._open(at_start=True)
            if self._conn is None and not self._known and store.is_empty(path):
                self._known = True  # nothing on disk yet, so any seq is new
            self._refresh()

    # -- pipeline thread ------------------------------------------------------------------

    def add(self, event: Event) -> None:
        """Commit ``event`` (history always, outbox when delivering): durable on return while
        the disk is healthy, else held in memory; never raises for a storage fault."""
        self._commit(EventRow(
            event_id=event.id, kind=event.kind, state=event.state, episode=event.episode,
            severity=event.severity, created=event.created or time.time(),
            payload=event.to_json(), seq=0,
        ))

    def add_message(
        self, topic: str, payload: bytes, *, retain: bool = False, kind: str = MESSAGE_KIND,
        severity: int = SEVERITY_WARNING, message_id: str | None = None,
    ) -> None:
        """Commit a message for ``<prefix>/<machine>/<topic>`` (``topic`` relative, e.g.
        ``model``), published at QoS 1 with ``retain``, in order with the events and with
        their guarantees (``severity`` ranks it for the size cap). ``kind`` names it in the
        history; ``message_id`` (default: a new one) is its id in logs and in the v5 user
        property ``event_id``. Every message is delivered, even when a newer one for the same
        retained topic follows it. ValueError for a topic the uplink cannot publish."""
        problem = relative_topic_problem(topic)
        if problem is not None:
            raise ValueError(f"outbox message topic {topic!r}: {problem}")
        if not kind:
            raise ValueError("outbox message kind: it is empty")
        self._commit(EventRow(
            event_id=message_id or new_id(), kind=kind, state="", episode="",
            severity=severity, created=time.time(), payload=bytes(payload), seq=0,
            topic=topic, retain=retain,
        ))

    def _commit(self, row: EventRow) -> None:
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            self._held[seq] = _Held(dataclasses.replace(row, seq=seq))
            if not self._degraded:
                self._write()
            elif time.monotonic() >= self._next_retry:
                self._retry()
            self._trim_held()
            self._refresh()

    def maintain(self) -> None:
        """Retry a disk that refused writes, once ``retry_s`` has passed. Call it often (the
        agent's main loop does, every tick): while healthy it reads one attribute."""
        if not self._degraded:  # a plain bool read: no lock on the healthy path
            return
        with self._lock:
            if time.monotonic() >= self._next_retry:
                self._retry()
            self._refresh()

    # -- uplink thread --------------------------------------------------------------------

    def pending(self, limit: int, after_seq: int = 0) -> list[Pending]:
        """Up to ``limit`` undelivered events with ``seq > after_seq``, oldest first: rows on
        disk and events held in memory, merged in seq order."""
        with self._lock:
            disk: list[Pending] = []
            if self._conn is not None:
                try:
                    rows = store.pending_rows(self._conn, after_seq, limit, self._acked_disk)
                    disk = [Pending(*r) for r in rows]
                    self._read_failed = False
                except sqlite3.Error as err:
                    self._fault(_READ, err)
            held = [
                Pending(h.row.seq, h.row.event_id, h.row.payload, h.row.topic, h.row.retain)
                for h in self._held.values()
                if h.row.seq > after_seq and self._handed_out(h)
            ]
            self._refresh()
        return list(itertools.islice(heapq.merge(disk, held, key=lambda p: p.seq), limit))

    def ack(self, seq: int) -> None:
        """The broker has the event: delete it (a no-op if the size cap dropped it)."""
        self.ack_many((seq,))

    def ack_many(self, seqs: Iterable[int]) -> None:
        """Delete several acknowledged events in one transaction (one fsync, not one each).
        An event still held in memory is marked delivered (it will reach the history only);
        while the disk refuses writes the deletes wait in memory too; unknown seqs are
        ignored."""
        with self._lock:
            on_disk: list[int] = []
            for seq in dict.fromkeys(seqs):
                held = self._held.get(seq)
                if held is not None:
                    held.acked = True
                elif seq not in self._acked_disk:
                    on_disk.append(seq)
            if on_disk and self._conn is not None:
                self._ack_on_disk(on_disk)
            self._refresh()

    # -- readers --------------------------------------------------------------------------

    def depth(self) -> int:
        """Events waiting for a PUBACK."""
        with self._lock:
            return self._disk_rows + sum(1 for h in self._held.values() if self._waiting(h))

    def pending_bytes(self) -> int:
        """Payload bytes waiting for a PUBACK (what the size cap counts)."""
        with self._lock:
            held = sum(len(h.row.payload) for h in self._held.values() if self._waiting(h))
            return self._disk_bytes + held

    def dropped(self) -> int:
        """Undelivered events dropped since the file was created: by the size cap, and from
        memory while the disk refused writes."""
        with self._lock:
            return self._dropped

    def recent(
        self, limit: int = 50, kind: str | None = None, *, topic: str | None = None
    ) -> list[StoredEvent]:
        """The newest events and messages from the history (only ``kind`` and relative
        ``topic`` if given), newest first, with their delivery state (held ones first: they
        are the newest)."""
        with self._lock:
            out = [
                StoredEvent.of(
                    h.row, delivery_state(queued=self._deliver, dropped=False, waiting=not h.acked)
                )
                for h in reversed(self._held.values())
                if (kind is None or h.row.kind == kind) and (topic is None or h.row.topic == topic)
            ][:limit]
            if self._conn is not None and len(out) < limit:
                try:
                    out += store.recent(
                        self._conn, limit - len(out), kind, self._acked_disk, topic=topic
                    )
                    self._read_failed = False
                except sqlite3.Error as err:
                    self._fault(_READ, err)
            self._refresh()
            return out

    def health(self) -> OutboxHealth:
        """Degraded state and storage-fault counters (cheap: memory only)."""
        with self._lock:
            return OutboxHealth(
                degraded=self._degraded, held=len(self._held), store_errors=self._store_errors,
                memory_dropped=self._memory_dropped, history_dropped=self._history_dropped,
                quarantined=self._quarantined, last_error=self._last_error,
            )

    def close(self) -> None:
        """Write what memory holds if the disk now takes it; log each event that is lost."""
        with self._lock:
            if self._closed:
                return
            if self._degraded:
                self._retry()
                self._refresh()
            for h in self._held.values():
                if not h.acked:
                    self._memory_dropped += 1
                    log.error(
                        "%s: the disk still refuses writes at exit: event %s (severity %d) is "
                        "lost: %s", self.path, h.row.event_id, h.row.severity, _shown(h.row),
                    )
            self._held.clear()
            self._close_conn()
            self._closed = True

    # -- internals (the caller holds _lock) -----------------------------------------------

    def _waiting(self, h: _Held) -> bool:
        return self._deliver and not h.acked

    def _handed_out(self, h: _Held) -> bool:
        """Give a held event to the uplink only once its seq is final (the file was read)."""
        return self._known and self._waiting(h)

    def _write(self) -> bool:
        """Write the held events, remembered acks and the drop counter in one transaction.
        A corrupt file is moved aside and the write made once more, to the fresh file."""
        for _ in range(2):
            conn = self._conn
            if conn is None or self._exclusive:
                return False
            rows = [(h.row, self._waiting(h)) for h in self._held.values()]
            added = sum(len(row.payload) for row, waiting in rows if waiting)
            try:
                self._set_sync(conn, full=True)
                victims = store.write_events(
                    conn, rows, queued=self._deliver, deletes=list(self._acked_disk),
                    history_keep=self._cfg.history_events,
                    excess_bytes=self._disk_bytes + added - self._cap_bytes,
                    dropped=self._dropped, dropped_on_disk=self._dropped_on_disk,
                )
            except sqlite3.Error as err:
                self._fault(_WRITE, err)
                if self._conn is conn or self._conn is None:
                    return False
                continue  # the corrupt file was moved aside: write to the fresh one
            if self._degraded:
                self._spell_written += len(self._held)
            self._held.clear()
            self._acked_disk.clear()
            self._disk_rows += sum(1 for _, waiting in rows if waiting) - len(victims)
            self._disk_bytes += added - sum(size for _, size in victims)
            self._dropped += len(victims)
            self._dropped_on_disk = self._dropped
            if victims:
                self._throttle.warning(
                    "cap",
                    "outbox over its %g MiB cap (broker unreachable?): dropped %d undelivered "
                    "event(s), lowest severity and oldest first; %d dropped in all",
                    self._cfg.max_mb, len(victims), self._dropped,
                )
            return True
        return False

    def _ack_on_disk(self, seqs: list[int]) -> None:
        conn = self._conn
        assert conn is not None
        if not self._degraded:
            try:
                # A lost ack only means a duplicate after a power cut, which consumers drop
                # by id; NORMAL spares the SD card an fsync per PUBACK.
                self._set_sync(conn, full=False)
                rows, size = store.delete_rows(conn, seqs)
                self._disk_rows -= rows
                self._disk_bytes -= size
                return
            except sqlite3.Error as err:
                self._fault(_DELETE, err)
                if self._conn is not conn:  # moved aside: the rows went with the file
                    return
        # The disk refuses writes: remember the acks (with the sizes, so the counters stay
        # exact) and delete the rows with the next write that succeeds.
        try:
            sizes = store.row_sizes(conn, seqs)
        except sqlite3.Error as err:
            self._fault(_READ, err)
            self._throttle.warning(
                "lost-acks", "%s: %d acknowledgement(s) could not be recorded; those events "
                "will be sent again (consumers drop copies by id)", self.path, len(seqs),
            )
            return
        self._acked_disk.update(sizes)
        self._disk_rows -= len(sizes)
        self._disk_bytes -= sum(sizes.values())

    def _retry(self) -> None:
        self._next_retry = time.monotonic() + self._cfg.retry_s
        if self._closed:
            return
        if self._conn is None or self._exclusive:
            self._open(at_start=False)
        if self._conn is None or self._exclusive:
            return
        if self._held or self._acked_disk or self._dropped != self._dropped_on_disk:
            self._write()
        elif self._read_failed:
            try:
                store.read_dropped(self._conn)
                self._read_failed = False
            except sqlite3.Error as err:
                self._fault(_READ, err)

    def _open(self, *, at_start: bool) -> None:
        """Use the file normally if possible, else read it in exclusive mode, else not at
        all (memory only). At start, what an operator must fix raises OutboxError."""
        self._close_conn()
        for exclusive in (False, True):
            try:
                conn = self._connect(exclusive=exclusive)
            except OutboxError as err:  # a newer schema, or a corrupt file that cannot move
                if at_start:
                    raise
                self._fault(_OPEN, err, move_corrupt=False)
                return
            except sqlite3.Error as err:
                if at_start and not exclusive and store.needs_operator(err, self.path):
                    raise OutboxError(
                        f"{self.path}: cannot open the event outbox: {err}"
                    ) from err
                self._fault(_OPEN, err, move_corrupt=False)
                continue
            try:
                self._adopt(conn, exclusive=exclusive)
            except sqlite3.Error as err:
                self._conn = None
                conn.close()
                self._fault(_READ, err, move_corrupt=False)
                continue
            return

    def _connect(self, *, exclusive: bool) -> sqlite3.Connection:
        try:
            return store.connect(self.path, exclusive=exclusive, check=not self._checked)
        except store.CorruptError as err:
            self._move_aside(str(err))
        return store.connect(self.path, exclusive=exclusive, check=False)

    def _adopt(self, conn: sqlite3.Connection, *, exclusive: bool) -> None:
        self._conn = conn
        self._exclusive = exclusive
        self._checked = True
        self._sync_full = True
        self._busy_short = False
        self._read_failed = False
        if self._known:
            return  # the same file, or a fresh one: the counters already fit it
        totals = store.read_totals(conn)
        self._disk_rows, self._disk_bytes = totals.rows, totals.bytes
        self._dropped += totals.dropped
        self._dropped_on_disk = totals.dropped
        # Seqs given while the file could not be read were provisional and never handed
        # out: renumber the held events above everything the file has used.
        held = list(self._held.values())
        self._held = {
            seq: _Held(dataclasses.replace(h.row, seq=seq), acked=h.acked)
            for seq, h in enumerate(held, start=totals.high_water + 1)
        }
        self._next_seq = totals.high_water + 1 + len(held)
        self._known = True

    def _move_aside(self, reason: str) -> None:
        """Quarantine the corrupt file; the counters then describe a fresh, empty one."""
        lost = (
            f"{self._disk_rows + len(self._acked_disk)} undelivered event(s)" if self._known
            else "the undelivered events"
        )
        self._close_conn()
        try:
            dest = store.quarantine(self.path)
        except OSError as err:
            raise OutboxError(
                f"{self.path}: the event outbox is corrupt ({reason}) and could not be moved "
                f"aside: {err}"
            ) from err
        self._quarantined += 1
        self._checked = False
        self._disk_rows = self._disk_bytes = self._dropped_on_disk = 0
        self._acked_disk.clear()
        if not self._known:  # found at start: nothing was read, so every seq is new
            self._known = True
        log.error(
            "%s: the event outbox is corrupt or not a database (%s); moved it aside to %s and "
            "started an empty outbox (%s in it were not sent; events held in memory go to "
            "the new one)", self.path, reason, dest, lost,
        )

    def _fault(
        self, what: str, err: sqlite3.Error | OutboxError, *, move_corrupt: bool = True
    ) -> None:
        """A storage operation failed: count it, and move a corrupt file aside at once and
        open a fresh one (``move_corrupt``: not while opening, which has just done that)."""
        self._store_errors += 1
        self._last_error = f"cannot {what}: {store.describe(err)}"
        if move_corrupt and store.is_corrupt(err):
            try:
                self._move_aside(store.describe(err))
            except OutboxError as move_err:
                self._last_error = store.describe(move_err)
                log.error("%s", move_err)
                return
            self._open(at_start=False)
            return
        if what == _READ:
            self._read_failed = True
        self._throttle.log(
            logging.ERROR, "fault",
            "%s: cannot %s (%s); events are kept in memory (at most %d, the lowest severity "
            "dropped first) and the disk is retried every %g s",
            self.path, what, store.describe(err), self._cfg.memory_events, self._cfg.retry_s,
        )

    def _trim_held(self) -> None:
        """Keep at most ``memory_events`` in memory: the history lines of delivered events
        go first, then the lowest-severity, oldest undelivered events, each logged whole."""
        while len(self._held) > self._cfg.memory_events:
            victim = min(
                self._held.values(), key=lambda h: (not h.acked, h.row.severity, h.row.seq)
            )
            del self._held[victim.row.seq]
            row = victim.row
            if victim.acked:
                self._history_dropped += 1
                self._throttle.warning(
                    "history", "%s: memory full while the disk refuses writes: history lines "
                    "of delivered events are not kept (%d so far)", self.path,
                    self._history_dropped,
                )
                continue
            self._memory_dropped += 1
            self._spell_dropped += 1
            self._dropped += 1
            log.error(
                "%s: memory full (%d events) while the disk refuses writes: dropped event %s "
                "(severity %d, %d dropped from memory so far): %s", self.path,
                self._cfg.memory_events, row.event_id, row.severity, self._memory_dropped,
                _shown(row),
            )

    def _refresh(self) -> None:
        """Recompute the degraded flag; log a recovery; shorten the busy timeout meanwhile."""
        degraded = (
            self._conn is None or self._exclusive or self._read_failed or bool(self._held)
            or bool(self._acked_disk)
        )
        if degraded and not self._degraded:
            self._next_retry = time.monotonic() + self._cfg.retry_s
            self._spell_start = time.monotonic()
        elif self._degraded and not degraded:
            log.info(
                "%s: the event outbox works normally again after %.1f s: %d event(s) held in "
                "memory meanwhile were written to disk, %d dropped", self.path,
                time.monotonic() - self._spell_start, self._spell_written, self._spell_dropped,
            )
            self._spell_written = self._spell_dropped = 0
            self._throttle.clear("fault")
        self._degraded = degraded
        if self._conn is not None and degraded != self._busy_short:
            timeout_s = store.BUSY_TIMEOUT_S
            if degraded:
                timeout_s = min(timeout_s, RETRY_BUSY_TIMEOUT_S)
            try:
                self._conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * MS_PER_S)}")
                self._busy_short = degraded
            except sqlite3.Error as err:
                self._fault(_TUNE, err)

    def _set_sync(self, conn: sqlite3.Connection, *, full: bool) -> None:
        if full != self._sync_full:
            conn.execute(f"PRAGMA synchronous = {'FULL' if full else 'NORMAL'}")
            self._sync_full = full

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        self._exclusive = False
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as err:  # a failed final checkpoint: the WAL keeps the data
                self._fault(_CLOSE, err)



def read_recent(
    path: Path, limit: int = 50, kind: str | None = None, *, topic: str | None = None
) -> list[StoredEvent]:
    """:meth:`Outbox.recent` for ``python -m edge_agent events`` beside a running daemon:
    read-only, so it never creates, migrates or moves the daemon's file (an older file is
    read as it is)."""
    try:
        conn = open_readonly(path)
        try:
            version = min(read_version(conn), SCHEMA_VERSION)
            return store.recent(conn, limit, kind, topic=topic, version=version)
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise OutboxError(f"{path}: cannot read stored events: {err}") from err
