"""``export fleet``: the machines the broker knows, from what their agents retain on it.

Sits on the desk, reading what the gateways leave retained on the broker: the uplink's
``<prefix>/<machine>/status`` (online or offline, with the time; the broker itself publishes
``offline`` as the last will of a gateway that vanished) and the OTA updater's
``<prefix>/<machine>/model`` report (active model version, update state and reason, groups).
Nothing here needs the signing key.

``--clean-chunks`` deletes (publishes an empty retained payload to) every retained chunk under
``<prefix>/ota/blob/`` whose file no retained deployment lists. Deployments are read without
checking their signature (only their file lists matter here); one that cannot be read stops
the cleaning, because the chunks it needs cannot be told apart. Do not clean while a publish
is under way: its chunks go out before the deployment that names them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TextIO

from pydantic import ValidationError

from edge_agent.ota.protocol import (
    REPORT_SUFFIX,
    SIGNATURE_BYTES,
    Deployment,
    Report,
    parse_chunk_topic,
    parse_time,
)
from export.broker import QOS_AT_MOST_ONCE, DeskLink
from export.errors import ExportError

STATUS_SUFFIX = "status"
UNKNOWN = "-"


@dataclass
class MachineRow:
    """One line of the fleet table (and one object of ``--json``)."""

    machine_id: str
    link: str = "unknown"  # online, offline, unknown (no retained status)
    link_reason: str | None = None
    active: str | None = None
    state: str | None = None
    reason: str | None = None
    candidate: str | None = None
    groups: tuple[str, ...] = ()
    last_seen: str | None = None
    agent_version: str | None = None


@dataclass(frozen=True)
class Cleaned:
    chunks_deleted: int
    files_deleted: int
    bytes_freed: int
    chunks_kept: int


def _split(prefix: str, topic: str) -> tuple[str, str] | None:
    """``(machine, suffix)`` of ``<prefix>/<machine>/<suffix>``."""
    head = f"{prefix}/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head) :].split("/")
    return (parts[0], parts[1]) if len(parts) == 2 and parts[0] else None


def _later(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    try:
        return a if parse_time(a) >= parse_time(b) else b
    except ValueError:
        return a


def collect(link: DeskLink, prefix: str, wait_s: float) -> list[MachineRow]:
    """Every machine with a retained status or report, sorted by id."""
    found = link.retained(
        [f"{prefix}/+/{STATUS_SUFFIX}", f"{prefix}/+/{REPORT_SUFFIX}"], max_wait_s=wait_s
    )
    rows: dict[str, MachineRow] = {}
    for topic, payload in sorted(found.items()):
        where = _split(prefix, topic)
        if where is None or not payload:
            continue
        machine, suffix = where
        row = rows.setdefault(machine, MachineRow(machine))
        if suffix == STATUS_SUFFIX:
            _read_status(row, payload)
        else:
            _read_report(row, payload)
    return [rows[m] for m in sorted(rows)]


def _read_status(row: MachineRow, payload: bytes) -> None:
    try:
        body = json.loads(payload)
    except ValueError:
        row.link_reason = "unreadable status"
        return
    if not isinstance(body, dict):
        return
    state = body.get("state")
    row.link = state if state in ("online", "offline") else "unknown"
    reason = body.get("reason")
    row.link_reason = str(reason) if reason else None
    stamp = body.get("time")
    row.last_seen = _later(row.last_seen, stamp if isinstance(stamp, str) else None)
    version = body.get("agent_version")
    row.agent_version = row.agent_version or (version if isinstance(version, str) else None)


def _read_report(row: MachineRow, payload: bytes) -> None:
    try:
        r = Report.model_validate_json(payload)
    except ValidationError:
        row.state, row.reason = "unknown", "unreadable model report"
        return
    row.active, row.state, row.reason = r.active, r.state, r.reason
    row.candidate, row.groups = r.candidate, tuple(r.groups)
    row.last_seen = _later(row.last_seen, r.updated_at)
    row.agent_version = r.agent_version


def clean_chunks(link: DeskLink, prefix: str, wait_s: float) -> Cleaned:
    """Delete the retained chunks of files that no retained deployment lists."""
    deployments = link.retained(
        [f"{prefix}/ota/machine/+/deployment", f"{prefix}/ota/group/+/deployment"],
        max_wait_s=wait_s,
    )
    used: set[str] = set()
    for topic, payload in deployments.items():
        if not payload:
            continue
        try:
            d = Deployment.model_validate_json(payload[SIGNATURE_BYTES:])
        except ValidationError:
            raise ExportError(
                f"{topic}: a retained deployment that cannot be read; not cleaning, since the "
                f"chunks it needs are unknown (remove it with an empty retained publish: "
                f"mosquitto_pub -r -n -t '{topic}')"
            ) from None
        used.update(f.sha256 for f in d.files.values())
    # QoS 0: the broker never queues these for us, so a long list cannot overflow its queue;
    # a chunk that does not arrive is kept, the safe side.
    chunks = link.retained(
        [f"{prefix}/ota/blob/+/+"], max_wait_s=wait_s, qos=QOS_AT_MOST_ONCE
    )
    doomed: dict[str, bytes] = {}
    kept = 0
    for topic, payload in chunks.items():
        parsed = parse_chunk_topic(prefix, topic)
        if parsed is None or not payload:
            continue
        if parsed[0] in used:
            kept += 1
        else:
            doomed[topic] = payload
    link.publish((t, b"") for t in doomed)
    files = {parsed[0] for t in doomed if (parsed := parse_chunk_topic(prefix, t))}
    return Cleaned(len(doomed), len(files), sum(len(p) for p in doomed.values()), kept)


def print_table(rows: list[MachineRow], cleaned: Cleaned | None, out: TextIO) -> None:
    head = ("machine", "link", "model", "update", "groups", "last seen")
    lines = [head]
    for r in rows:
        update = r.state or UNKNOWN
        if r.state in ("downloading", "verifying", "canary", "probation") and r.candidate:
            update = f"{r.state} {r.candidate}"
        if r.reason:
            update = f"{update}: {r.reason}"
        link = f"{r.link} ({r.link_reason})" if r.link_reason else r.link
        lines.append((r.machine_id, link, r.active or UNKNOWN, update,
                      ",".join(r.groups) or UNKNOWN, r.last_seen or UNKNOWN))
    if not rows:
        print("no machine has a retained status or model report on this broker", file=out)
    else:
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        for line in lines:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(),
                  file=out)
    if cleaned is not None:
        print(
            f"cleaned {cleaned.chunks_deleted} chunks of {cleaned.files_deleted} unused files "
            f"({cleaned.bytes_freed} bytes freed); {cleaned.chunks_kept} chunks in use kept",
            file=out,
        )


def print_json(rows: list[MachineRow], cleaned: Cleaned | None, out: TextIO) -> None:
    doc: dict[str, object] = {"machines": [asdict(r) for r in rows]}
    if cleaned is not None:
        doc["cleaned"] = asdict(cleaned)
    print(json.dumps(doc, indent=2), file=out)
