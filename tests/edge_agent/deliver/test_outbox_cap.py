"""The size cap over a large outbox: an add frees what it must without reading every row.

During a long broker outage the cap bites on every add; the work of one add must not grow
with the number of rows waiting. Measured in SQLite virtual-machine steps on the outbox's
own connection (a progress handler), which is exact and does not depend on machine speed.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from deliver_support import make_event

from edge_agent.deliver.config import OutboxConfig
from edge_agent.deliver.outbox import Outbox
from edge_agent.events import SEVERITY_CRITICAL, SEVERITY_INFO

SMALL_ROWS = 200
LARGE_ROWS = 4000  # 20 times as many rows waiting ...
MAX_STEP_RATIO = 1.5  # ... may cost an add at most this much more (reading them all: ~20x)
INFO_EVERY = 97  # every 97th waiting row is low severity: the ones the cap takes first
BYTES_PER_MIB = 1 << 20


def _steps_of_add(rows: int, tmp_path: Path) -> tuple[int, list[str], Outbox]:
    """An outbox exactly at its cap with ``rows`` rows, then one more add: the VM steps that
    add took, and the payloads of the rows the cap should drop first."""
    path = tmp_path / f"events-{rows}.db"
    size = len(make_event(10).to_json())  # events 10..99 all serialise to this length
    cfg = OutboxConfig(max_mb=rows * size / BYTES_PER_MIB, history_events=2 * rows)
    Outbox(path, cfg, deliver=True).close()
    info: list[str] = []
    with closing(sqlite3.connect(path)) as conn, conn:
        for seq in range(1, rows + 1):
            severity = SEVERITY_INFO if seq % INFO_EVERY == 0 else SEVERITY_CRITICAL
            payload = f"{seq:0{size}d}".encode()
            conn.execute(
                "INSERT INTO outbox (seq, event_id, severity, payload) VALUES (?, ?, ?, ?)",
                (seq, f"id{seq}", severity, payload),
            )
            conn.execute(
                "INSERT INTO history (seq, event_id, kind, state, episode, severity, created,"
                " payload) VALUES (?, ?, 'anomaly', 'open', 'ep', ?, 0, ?)",
                (seq, f"id{seq}", severity, payload),
            )
            if severity == SEVERITY_INFO:
                info.append(f"id{seq}")
    box = Outbox(path, cfg, deliver=True)
    assert box.pending_bytes() == rows * size
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0  # carry on

    conn = box._conn  # the outbox's own connection is what is measured
    assert conn is not None
    conn.set_progress_handler(count, 1)
    box.add(make_event(11, severity=SEVERITY_CRITICAL))
    conn.set_progress_handler(None, 1)
    return steps, info, box


def test_cap_frees_the_lowest_severity_oldest_without_reading_every_row(
    tmp_path: Path,
) -> None:
    small, _, box = _steps_of_add(SMALL_ROWS, tmp_path)
    box.close()
    large, info, box = _steps_of_add(LARGE_ROWS, tmp_path)
    try:
        assert large < MAX_STEP_RATIO * small, (small, large)
        # One row over the cap: exactly the oldest low-severity row went, and was marked so.
        assert box.dropped() == 1
        assert box.depth() == LARGE_ROWS
        waiting = {r.event_id for r in box.pending(LARGE_ROWS + 1)}
        assert info[0] not in waiting
        assert set(info[1:]) <= waiting
        states = {s.event_id: s.delivery for s in box.recent(LARGE_ROWS + 1)}
        assert states[info[0]] == "dropped"
        assert list(states.values()).count("dropped") == 1
    finally:
        box.close()
