"""The outbox file's schema, its version, and the in-place migration of older files.

Used by ``edge_agent.deliver.store`` when it opens ``events.db``. A file from an older agent
is migrated in place, in one transaction, when the daemon opens it (its undelivered events
are kept and still delivered first); the read-only ``edge_agent events`` reader never writes,
so it reads an older layout as it is. A file from a newer agent is refused by the store.

Versions:
1. events only: the ``outbox`` FIFO and the ``history`` shown by ``edge_agent events``.
2. any message: each row also has ``topic`` (relative to ``<prefix>/<machine>/``) and
   ``retain``; version 1 rows become ``events``, not retained.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3

log = logging.getLogger("edge_agent.deliver.outbox")

SCHEMA_VERSION = 2

# AUTOINCREMENT: a seq is never reused, even after the newest row is acknowledged and
# deleted, so the uplink's "everything after the last seq I sent" stays correct. The outbox
# numbers rows itself (explicit seqs), which keeps sqlite_sequence at the highest one.
# history_by_seq serves the size cap's "mark dropped" without a scan of the history; it
# was added within schema version 1 (older agents ignore it). The columns of version 2 come
# last, where ALTER TABLE puts them, so a new file and a migrated one look the same.
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    severity INTEGER NOT NULL,
    payload BLOB NOT NULL,
    topic TEXT NOT NULL DEFAULT 'events',
    retain INTEGER NOT NULL DEFAULT 0
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
    payload BLOB NOT NULL,
    topic TEXT NOT NULL DEFAULT 'events',
    retain INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS history_by_seq ON history (seq);
INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', {SCHEMA_VERSION});
"""

# The statements that take a file from version N to N + 1.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE outbox ADD COLUMN topic TEXT NOT NULL DEFAULT 'events'",
        "ALTER TABLE outbox ADD COLUMN retain INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE history ADD COLUMN topic TEXT NOT NULL DEFAULT 'events'",
        "ALTER TABLE history ADD COLUMN retain INTEGER NOT NULL DEFAULT 0",
    ),
}


def read_version(conn: sqlite3.Connection) -> int:
    """The file's schema version; sqlite3.DatabaseError if it has none (not an outbox)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        raise sqlite3.DatabaseError("no schema version in the meta table: not an event outbox")
    return int(row[0])


def migrate(conn: sqlite3.Connection, path: object) -> None:
    """Bring an older file up to :data:`SCHEMA_VERSION` in one transaction (all steps or
    none: a power cut leaves the old version, migrated again at the next open). The caller
    has checked that the file is not newer."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = version = read_version(conn)  # again, inside the write lock
        while version < SCHEMA_VERSION:
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            version += 1
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,)
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the original error is the one to report
                conn.execute("ROLLBACK")
        raise
    if found < SCHEMA_VERSION:
        log.info("%s: event outbox migrated from schema version %d to %d; its events are kept",
                 path, found, SCHEMA_VERSION)
