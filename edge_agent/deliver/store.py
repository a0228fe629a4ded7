"""The outbox's SQLite file: opening it (WAL, schema and version, corrupt files), telling
storage faults apart, and the SQL of each outbox operation.

Used only by ``edge_agent.deliver.outbox``, which owns the connection, the lock and the state
kept in memory; every function here runs on a connection it is given and raises sqlite3
errors for the outbox to classify:

- ``is_corrupt``: the bytes are not a healthy database (an SD card that lost power mid-write,
  a file that is not a database at all). The file is moved aside by ``quarantine`` to
  ``events.db.corrupt-<timestamp>`` (never deleted, someone may want to recover it) and a
  fresh outbox is started, at start and at run time alike.
- ``needs_operator``: permission denied or a read-only file system. Nothing the agent can
  wait out, so the outbox refuses to start (exit code 2); a file written by a newer agent is
  refused too, since its events are fine and a downgrade should not discard them.
- anything else (disk full, I/O error, a lock held past the busy timeout): a fault the outbox
  rides out in memory and retries.

A disk too full to create the ``-shm`` file can still be read with ``connect(exclusive=True)``
(SQLite then keeps the WAL index in process memory), which lets the outbox deliver the events
already on disk while it cannot write.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from edge_agent.deliver import schema
from edge_agent.deliver.listing import EventRecord, StoredEvent, delivery_state
from edge_agent.deliver.schema import SCHEMA_VERSION
from edge_agent.errors import EdgeAnomalyError

log = logging.getLogger("edge_agent.deliver.outbox")

BUSY_TIMEOUT_S = 10.0  # another process (`edge_agent events`) may hold the write lock briefly
# Primary result codes (sqlite3.h) that tell corruption and set-up faults from the rest.
SQLITE_PERM = 3
SQLITE_READONLY = 8
SQLITE_CORRUPT = 11
SQLITE_CANTOPEN = 14
SQLITE_AUTH = 23
SQLITE_NOTADB = 26
PRIMARY_CODE_MASK = 0xFF  # extended result codes carry the primary code in the low byte
OPERATOR_CODES = frozenset({SQLITE_PERM, SQLITE_READONLY, SQLITE_AUTH})
# Why the OS refused to open a file: these pass once the disk has room or recovers.
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})
FILE_MODE = 0o644  # what SQLite itself creates a database file with
SIDECARS = ("-wal", "-shm")  # WAL mode's companion files, moved aside with the database

class OutboxError(EdgeAnomalyError):
    """The outbox file cannot be used and an operator must act; the message names the file."""


class CorruptError(sqlite3.DatabaseError):
    """The file exists but its bytes are not a healthy SQLite database."""


@dataclass(frozen=True)
class EventRow(EventRecord):
    """One event as the outbox stores it; ``seq`` is the outbox's own number for it."""

    seq: int


class Totals(NamedTuple):
    """What the outbox keeps in memory about a file, read once when it adopts the file."""

    rows: int  # undelivered events
    bytes: int  # their payload bytes (what the size cap counts)
    dropped: int  # the persistent drop counter
    high_water: int  # the highest seq the file has used


def _primary_code(err: BaseException) -> int | None:
    code = getattr(err, "sqlite_errorcode", None)
    return None if code is None else int(code) & PRIMARY_CODE_MASK


def is_corrupt(err: BaseException) -> bool:
    """``err`` says the file's bytes are not a healthy database."""
    return isinstance(err, CorruptError) or _primary_code(err) in (SQLITE_CORRUPT, SQLITE_NOTADB)


def needs_operator(err: sqlite3.Error, path: Path) -> bool:
    """Opening ``path`` failed for a reason waiting cannot fix (permission denied, read-only
    file system, not a file), rather than a full or failing disk."""
    code = _primary_code(err)
    if code in OPERATOR_CODES:
        return True
    if code != SQLITE_CANTOPEN:
        return False
    # SQLite does not say why it could not open the file: ask the OS the same question.
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError as os_err:
        return os_err.errno not in TRANSIENT_ERRNOS
    os.close(fd)
    return True


def describe(err: BaseException) -> str:
    """One line for logs and health: the message and, for SQLite, the error's name."""
    name = getattr(err, "sqlite_errorname", None)
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{text} ({name})" if name else text


def ensure_dir(path: Path) -> None:
    """Create the directory that holds ``path``; OutboxError if that is impossible."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutboxError(f"{path.parent}: cannot create the state directory: {err}") from err


def is_empty(path: Path) -> bool:
    """No events can be in ``path``: neither it nor its WAL holds a byte."""
    sizes = [p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists()]
    return sum(sizes) == 0


def connect(path: Path, *, exclusive: bool = False, check: bool = True) -> sqlite3.Connection:
    """Open, check (``PRAGMA quick_check`` reads the whole file) and migrate ``path``.

    ``exclusive``: EXCLUSIVE locking mode, set before WAL is touched, so that no ``-shm`` is
    needed (a full disk cannot create one); the schema is not written (only migrated), so
    only an existing outbox can be opened this way, and only this connection can use it while
    open.
    Raises CorruptError, OutboxError (a newer schema) or the sqlite3 error as it came.
    """
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        if exclusive:
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        if check:
            result = conn.execute("PRAGMA quick_check").fetchone()
            if result is None or result[0] != "ok":
                raise CorruptError(f"integrity check: {result[0] if result else 'no result'}")
        if not exclusive:
            # One script so that schema and version row appear together or not at all.
            conn.executescript(f"BEGIN IMMEDIATE; {schema.SCHEMA} COMMIT;")
        version = schema.read_version(conn)
        if version < SCHEMA_VERSION:
            # Even in exclusive mode: the rows cannot be read without it. On a disk too
            # full for these few pages this raises, and the outbox retries the open later.
            schema.migrate(conn, path)
    except sqlite3.DatabaseError as err:
        conn.close()
        if is_corrupt(err) and not isinstance(err, CorruptError):
            raise CorruptError(str(err)) from err
        raise
    except BaseException:
        conn.close()
        raise
    if version > SCHEMA_VERSION:
        conn.close()
        raise OutboxError(
            f"{path}: outbox schema version {version} was written by a newer agent (this one "
            f"reads version {SCHEMA_VERSION}); upgrade the agent, or move the file away to "
            "start an empty outbox"
        )
    return conn


def quarantine(path: Path) -> Path:
    """Move ``path`` and its WAL files aside (renames need no free space); the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while dest.exists():  # a rename onto an earlier quarantined file would destroy it
        n += 1
        dest = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("", *SIDECARS):
        src = path.with_name(path.name + suffix)
        if src.exists():
            src.rename(dest.with_name(dest.name + suffix))
    return dest


def read_dropped(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0])


def read_totals(conn: sqlite3.Connection) -> Totals:
    rows, size = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM outbox"
    ).fetchone()
    # An event acknowledged while held in memory reaches the history only, so the history
    # may hold a seq above sqlite_sequence.
    (high,) = conn.execute(
        "SELECT MAX(s) FROM (SELECT seq AS s FROM sqlite_sequence WHERE name = 'outbox'"
        " UNION ALL SELECT MAX(seq) FROM history)"
    ).fetchone()
    return Totals(int(rows), int(size), read_dropped(conn), int(high or 0))


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the original error is the one to report
                conn.execute("ROLLBACK")
        raise


def write_events(
    conn: sqlite3.Connection, rows: Sequence[tuple[EventRow, bool]], *, queued: bool,
    deletes: Collection[int], history_keep: int, excess_bytes: int, dropped: int,
    dropped_on_disk: int,
) -> list[tuple[int, int]]:
    """One transaction: delete the acknowledged ``deletes``, add ``rows`` in order (the
    history always, the outbox table where the row's flag says so; ``queued``: the history
    links rows to their seq), trim the history to ``history_keep``, free ``excess_bytes`` by
    the size cap, and store the drop counter (``dropped`` plus this transaction's drops)
    unless the file already has it. Returns the cap's victims as (seq, payload bytes)."""
    with _transaction(conn):
        if deletes:
            conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in deletes])
        newest = 0
        for row, waiting in rows:
            if waiting:
                conn.execute(
                    "INSERT INTO outbox (seq, event_id, severity, payload, topic, retain)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (row.seq, row.event_id, row.severity, row.payload, row.topic,
                     int(row.retain)),
                )
            cur = conn.execute(
                "INSERT INTO history (seq, event_id, kind, state, episode, severity, created,"
                " payload, topic, retain) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row.seq if queued else None, row.event_id, row.kind, row.state, row.episode,
                 row.severity, row.created, row.payload, row.topic, int(row.retain)),
            )
            newest = int(cur.lastrowid or 0)
        if rows:
            conn.execute("DELETE FROM history WHERE id <= ?", (newest - history_keep,))
        victims = _drop_over_cap(conn, excess_bytes) if excess_bytes > 0 else []
        if dropped + len(victims) != dropped_on_disk:
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'dropped'", (dropped + len(victims),)
            )
    return victims


def _drop_over_cap(conn: sqlite3.Connection, excess: int) -> list[tuple[int, int]]:
    """Delete the lowest-severity, oldest rows until ``excess`` bytes are freed.

    Walks the (severity, seq) index lazily and stops as soon as enough is freed: the cap
    bites on every add during a long broker outage, so reading every row each time would
    cost the whole file per event."""
    victims: list[tuple[int, int]] = []
    freed = 0
    cur = conn.execute(
        "SELECT seq, length(payload) FROM outbox INDEXED BY outbox_drop_order"
        " ORDER BY severity, seq"
    )
    try:
        for seq, size in cur:
            victims.append((int(seq), int(size)))
            freed += int(size)
            if freed >= excess:
                break
    finally:
        cur.close()
    seqs = [(seq,) for seq, _ in victims]
    conn.executemany("DELETE FROM outbox WHERE seq = ?", seqs)
    conn.executemany("UPDATE history SET dropped = 1 WHERE seq = ?", seqs)
    return victims


def delete_rows(conn: sqlite3.Connection, seqs: Sequence[int]) -> tuple[int, int]:
    """Delete acknowledged rows in one transaction; (rows, payload bytes) actually deleted."""
    rows = size = 0
    with _transaction(conn):
        for seq in seqs:
            for (length,) in conn.execute(
                "DELETE FROM outbox WHERE seq = ? RETURNING length(payload)", (seq,)
            ).fetchall():
                rows += 1
                size += int(length)
    return rows, size


def row_sizes(conn: sqlite3.Connection, seqs: Sequence[int]) -> dict[int, int]:
    """Payload bytes of those of ``seqs`` that are in the outbox table (a read only)."""
    out: dict[int, int] = {}
    for seq in seqs:
        found = conn.execute("SELECT length(payload) FROM outbox WHERE seq = ?", (seq,))
        for (length,) in found.fetchall():
            out[seq] = int(length)
    return out


PendingRow = tuple[int, str, bytes, str, bool]  # seq, id, payload, relative topic, retain


def pending_rows(
    conn: sqlite3.Connection, after_seq: int, limit: int, skip: Collection[int]
) -> list[PendingRow]:
    """Up to ``limit`` rows of the outbox table with ``seq > after_seq`` and not in ``skip``,
    in seq order, as (seq, id, payload, topic, retain)."""
    out: list[PendingRow] = []
    if limit <= 0:
        return out
    cur = conn.execute(
        "SELECT seq, event_id, payload, topic, retain FROM outbox WHERE seq > ? ORDER BY seq",
        (after_seq,),
    )
    try:
        for seq, event_id, payload, topic, retain in cur:
            if int(seq) in skip:
                continue
            out.append((int(seq), str(event_id), bytes(payload), str(topic), bool(retain)))
            if len(out) >= limit:
                break
    finally:
        cur.close()
    return out


# {topic}: the column, or the constant a version 1 file (read, never migrated, by the
# read-only reader) stands for.
_RECENT_SQL = (
    "SELECT h.seq, h.event_id, h.kind, h.state, h.episode, h.severity, h.created, h.payload,"
    " h.dropped, EXISTS (SELECT 1 FROM outbox o WHERE o.seq = h.seq), {topic}, {retain}"
    " FROM history h WHERE (? IS NULL OR h.kind = ?) AND (? IS NULL OR {topic} = ?)"
    " ORDER BY h.id DESC LIMIT ?"
)
_RECENT_V2 = _RECENT_SQL.format(topic="h.topic", retain="h.retain")
_RECENT_V1 = _RECENT_SQL.format(topic="'events'", retain="0")
FIRST_WITH_TOPICS = 2  # the schema version that added topic and retain


def recent(
    conn: sqlite3.Connection, limit: int, kind: str | None, delivered: Collection[int] = (),
    *, topic: str | None = None, version: int = SCHEMA_VERSION,
) -> list[StoredEvent]:
    """The newest history rows (of ``kind`` and relative ``topic`` if given), newest first;
    seqs in ``delivered`` were acknowledged but their rows not yet deleted. ``version``:
    the file's schema version, for a file read without migrating it."""
    sql = _RECENT_V2 if version >= FIRST_WITH_TOPICS else _RECENT_V1
    rows = conn.execute(sql, (kind, kind, topic, topic, limit)).fetchall()
    return [
        StoredEvent(
            event_id=r[1], kind=r[2], state=r[3], episode=r[4], severity=int(r[5]),
            created=float(r[6]), payload=bytes(r[7]), topic=str(r[10]), retain=bool(r[11]),
            delivery=delivery_state(
                queued=r[0] is not None, dropped=bool(r[8]),
                waiting=bool(r[9]) and r[0] not in delivered,
            ),
        )
        for r in rows
    ]


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection for another process (the ``events`` command); raises
    OutboxError if there is no outbox yet."""
    if not path.is_file():
        raise OutboxError(f"{path}: no event outbox here yet (has the agent run?)")
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
