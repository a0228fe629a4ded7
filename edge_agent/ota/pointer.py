"""The A/B slots on disk and the one file that says which of them runs: ``pointer.json``.

Layout under ``<state_dir>/ota/``::

    slots/a/, slots/b/       complete, verified bundles (never written while active)
    slots/<x>.new/           a bundle being assembled (removed at start if left over)
    staging/<deployment>/    chunks as they arrive (``edge_agent.ota.staging``)
    pointer.json             the switch: active slot, state, boot count, anti-rollback floor
    rejected.json            deployment ids refused or rolled back, so a retained one is not
                             downloaded again after every restart
    canary.json              the deployment being loaded and canaried, and how many agent
                             starts that took (a model that crashes the agent is refused)

Every change of ``pointer.json`` is one :func:`edge_agent.fsutil.atomic_write` (rename and
fsync): a power cut leaves the old pointer or the new, never a mix. The anti-rollback floor
(the newest release this gateway ever activated) lives in the same file, so it moves in the
same write as the switch (TUF's rollback attack: a replayed older release is refused).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from edge_agent.config.strict import StrictModel
from edge_agent.fsutil import atomic_write
from edge_agent.ota.protocol import parse_time

log = logging.getLogger("edge_agent.ota.pointer")

SlotName = Literal["a", "b"]
# Where a model can come from: a slot, or ``[model] bundle`` of the config ("config").
ModelSource = Literal["a", "b", "config"]
SLOTS: tuple[SlotName, SlotName] = ("a", "b")
OTA_DIR = "ota"
POINTER_NAME = "pointer.json"
REJECTED_NAME = "rejected.json"
CANARY_NAME = "canary.json"
NEW_SUFFIX = ".new"
REJECTED_KEPT = 64  # deployment ids remembered as refused (newest kept)


class Pointer(StrictModel):
    """Which model runs and how far it is trusted. Replaced whole on every change."""

    active: ModelSource | None = Field(description="Slot running now; None: no model yet")
    previous: ModelSource | None = Field(
        default=None, description="Where a rollback goes back to"
    )
    state: Literal["active", "probation"] = Field(
        description="probation: not yet marked good (boots are counted)"
    )
    boots: int = Field(default=0, ge=0, description="Agent starts since the switch")
    activated_at: str | None = Field(default=None, description="When the switch happened")
    floor: str | None = Field(
        default=None, description="created_at of the newest release ever activated"
    )
    floor_version: str | None = Field(default=None, description="That release's version")
    deployment_id: str | None = Field(default=None, description="Deployment of the active slot")
    previous_deployment_id: str | None = Field(
        default=None, description="Deployment of the previous slot"
    )


Floor = tuple[str | None, str | None]  # (created_at, model version) of the newest release


def higher_floor(floor: Floor, created_at: str, version: str) -> Floor:
    """The floor once a release made at ``created_at`` ran: it never goes down."""
    if floor[0] is not None and parse_time(floor[0]) >= parse_time(created_at):
        return floor
    return created_at, version


@dataclass(frozen=True)
class OtaPaths:
    """Where everything of the updater lives under ``state_dir``."""

    root: Path

    @classmethod
    def under(cls, state_dir: Path) -> OtaPaths:
        return cls(state_dir / OTA_DIR)

    @property
    def pointer(self) -> Path:
        return self.root / POINTER_NAME

    @property
    def rejected(self) -> Path:
        return self.root / REJECTED_NAME

    @property
    def canary(self) -> Path:
        return self.root / CANARY_NAME

    @property
    def slots(self) -> Path:
        return self.root / "slots"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    def slot(self, name: SlotName) -> Path:
        return self.slots / name

    def make(self) -> None:
        for d in (self.root, self.slots, self.staging):
            d.mkdir(parents=True, exist_ok=True)


def target_slot(pointer: Pointer | None) -> SlotName:
    """The slot a new bundle goes to: never the active one; the rollback target only when
    there is no other (A/B: the previous release is overwritten by the next)."""
    active = None if pointer is None else pointer.active
    previous = None if pointer is None else pointer.previous
    free = [s for s in SLOTS if s != active]
    spare = [s for s in free if s != previous]
    return (spare or free)[0]


def read_pointer(paths: OtaPaths) -> Pointer | None:
    """The pointer, or None if there is none yet. A file that cannot be understood (only
    something outside the agent can do that: writes are atomic) is logged and set aside."""
    try:
        raw = paths.pointer.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return Pointer.model_validate_json(raw)
    except ValidationError as exc:
        aside = paths.pointer.with_suffix(".corrupt")
        paths.pointer.replace(aside)
        log.error("%s is not a valid pointer (moved to %s): %s", paths.pointer, aside, exc)
        return None


def write_pointer(paths: OtaPaths, pointer: Pointer) -> None:
    """The switch point: atomic and durable."""
    paths.root.mkdir(parents=True, exist_ok=True)
    atomic_write(paths.pointer, pointer.model_dump_json(indent=1).encode())


def read_rejected(paths: OtaPaths) -> list[str]:
    try:
        doc = json.loads(paths.rejected.read_bytes())
    except FileNotFoundError:
        return []
    except ValueError:
        log.warning("%s unreadable; starting an empty list", paths.rejected)
        return []
    return [str(d) for d in doc] if isinstance(doc, list) else []


def remember_rejected(paths: OtaPaths, deployment_id: str, known: Sequence[str]) -> list[str]:
    """Add ``deployment_id`` to the refused list (bounded) and write it; returns the list."""
    kept = [d for d in known if d != deployment_id][-(REJECTED_KEPT - 1) :]
    ids = [*kept, deployment_id]
    paths.root.mkdir(parents=True, exist_ok=True)
    atomic_write(paths.rejected, json.dumps(ids).encode())
    return ids


def count_attempt(paths: OtaPaths, deployment_id: str) -> int:
    """Record one more attempt to load and canary ``deployment_id``; returns how many there
    have been (a count left by a previous start means that start died on this model)."""
    try:
        doc = json.loads(paths.canary.read_bytes())
    except (OSError, ValueError):
        doc = {}
    n = int(doc.get("attempts", 0)) + 1 if doc.get("deployment_id") == deployment_id else 1
    atomic_write(paths.canary, json.dumps({"deployment_id": deployment_id, "attempts": n}).encode())
    return n


def clear_attempts(paths: OtaPaths) -> None:
    paths.canary.unlink(missing_ok=True)
