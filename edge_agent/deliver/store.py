"""Opening the outbox's SQLite file: WAL mode, the schema and its version, corrupt files.

Used only by ``edge_agent.deliver.outbox``. An SD card that lost power mid-write, or a file
that is not a database at all, must not stop the agent: such a file is moved aside to
``events.db.corrupt-<timestamp>`` (never deleted, someone may want to recover it), an error is
logged, and a fresh outbox is started. A file written by a newer agent is refused instead,
since its events are fine and a downgrade should not discard them.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from edge_agent.errors import EdgeAnomalyError

log = logging.getLogger("edge_agent.deliver.outbox")

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0  # another process (`edge_agent events`) may hold the write lock briefly
# Primary result codes that mean "the bytes on disk are not a healthy database".
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26
PRIMARY_CODE_MASK = 0xFF  # extended result codes carry the primary code in the low byte
SIDECARS = ("-wal", "-shm")  # WAL mode's companion files, moved aside with the database

# AUTOINCREMENT: a seq is never reused, even after the newest row is acknowledged and
# deleted, so the uplink's "everything after the last seq I sent" stays correct.
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    severity INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_drop_order ON outbox (severity, seq);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    episode TEXT NOT NULL,
    severity INTEGER NOT NULL,
    created REAL NOT NULL,
    dropped INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', {SCHEMA_VERSION});
"""


class OutboxError(EdgeAnomalyError):
    """The outbox file cannot be opened or written; the message names the file."""


class _CorruptError(sqlite3.DatabaseError):
    """The file exists but its bytes are not a healthy SQLite database."""


def _is_corrupt(err: sqlite3.Error) -> bool:
    code = getattr(err, "sqlite_errorcode", None)
    return code is not None and (code & PRIMARY_CODE_MASK) in (SQLITE_CORRUPT, SQLITE_NOTADB)


def _connect(path: Path) -> sqlite3.Connection:
    """Open, check and migrate; raises sqlite3 errors for the caller to classify."""
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        check = conn.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise _CorruptError(f"integrity check: {check[0] if check else 'no result'}")
        # One script so that schema and version row appear together or not at all.
        conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        version = int(
            conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        )
    except sqlite3.DatabaseError as err:
        conn.close()
        if _is_corrupt(err):
            raise _CorruptError(str(err)) from err
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


def _quarantine(path: Path) -> Path:
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


def open_store(path: Path) -> sqlite3.Connection:
    """The outbox database at ``path``, created if missing; a corrupt file is moved aside."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutboxError(f"{path.parent}: cannot create the state directory: {err}") from err
    try:
        return _connect(path)
    except _CorruptError as err:
        try:
            dest = _quarantine(path)
        except OSError as move_err:
            raise OutboxError(
                f"{path}: the event outbox is corrupt ({err}) and could not be moved aside: "
                f"{move_err}"
            ) from err
        log.error(
            "%s: the event outbox is corrupt or not a database (%s); moved it aside to %s and "
            "started an empty outbox (undelivered events in it were not sent)",
            path, err, dest,
        )
    return _connect(path)


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection for another process (the ``events`` command); raises
    OutboxError if there is no outbox yet."""
    if not path.is_file():
        raise OutboxError(f"{path}: no event outbox here yet (has the agent run?)")
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
