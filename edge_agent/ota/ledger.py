"""What the updater knows and may change: the pointer, the running model, the refused list.

Shared by the updater's steps (``edge_agent.ota.updater``, ``install``, ``rollback``): one
:class:`Ledger` holds the on-disk state (every pointer change goes through
:meth:`Ledger.write_pointer`, atomic) and the model that runs now, answers what the checks need
(the anti-rollback floor, this gateway's targets and channels, bundles already on disk) and
publishes reports with the running and previous versions filled in.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from edge_agent.config.model import AgentConfig
from edge_agent.events import CanaryFigures, UpdateState
from edge_agent.model_slot import ModelSlot
from edge_agent.ota import boot
from edge_agent.ota.checks import BYTES_PER_MIB, Gateway
from edge_agent.ota.pointer import (
    SLOTS,
    Floor,
    ModelSource,
    OtaPaths,
    Pointer,
    higher_floor,
    read_rejected,
    remember_rejected,
    write_pointer,
)
from edge_agent.ota.protocol import Deployment, Progress
from edge_agent.ota.report import Reporter

log = logging.getLogger("edge_agent.ota")


class LocalThresholds(Protocol):
    """Personalisation's hook (``edge_agent.learn.personalise.Personaliser``): calibrate a
    candidate at canary, give every other copy of a model its stored local threshold."""

    def calibrate(self, model: ModelSlot) -> CanaryFigures: ...

    def apply(self, model: ModelSlot, *, running: bool = ...) -> None: ...


@dataclass(frozen=True)
class Handover:
    """A loaded model for the main loop to swap in."""

    slot: ModelSlot
    reason: str  # for the agent's log and the closed episodes
    kind: Literal["update", "rollback"]
    deployment_id: str | None
    canary: CanaryFigures | None = None
    why: str | None = None  # a rollback's cause


class Ledger:
    """The updater's state; used from its thread, and from the main loop's at a swap."""

    def __init__(self, cfg: AgentConfig, startup: boot.Startup, reporter: Reporter) -> None:
        self.cfg = cfg
        self.paths = OtaPaths.under(cfg.state_dir)
        self.reporter = reporter
        self.pointer = startup.pointer
        self.active = startup.slot
        self.source: ModelSource | None = startup.source
        self.rejected = read_rejected(self.paths)
        self.personaliser: LocalThresholds | None = None  # set by the agent with [learn]

    @property
    def version(self) -> str | None:
        return None if self.active is None else self.active.version

    def write_pointer(self, pointer: Pointer) -> None:
        write_pointer(self.paths, pointer)
        self.pointer = pointer

    def remember(self, deployment_id: str | None) -> None:
        """Refuse this deployment from now on, across restarts."""
        if deployment_id is not None:
            self.rejected = remember_rejected(self.paths, deployment_id, self.rejected)

    def floor(self) -> Floor:
        """The newest release ever activated: the pointer's floor, or the running model if it
        is newer (``[model] bundle`` before the first update counts as activated)."""
        p = self.pointer
        floor: Floor = (None, None) if p is None else (p.floor, p.floor_version)
        a = self.active
        return floor if a is None else higher_floor(floor, a.manifest.created_at, a.version)

    def gateway(self) -> Gateway:
        floor, version = self.floor()
        delivered = self.cfg.delivered_channels()
        return Gateway(
            machine_id=self.cfg.machine_id, groups=self.cfg.ota.groups, floor=floor,
            floor_version=version,
            max_bundle_bytes=int(self.cfg.ota.max_bundle_mb * BYTES_PER_MIB),
            delivered_channels=delivered or None,  # none: a replay source, the file decides
        )

    def local_dirs(self) -> list[Path]:
        """Bundles on this gateway whose files a download may reuse."""
        dirs = [self.paths.slot(s) for s in SLOTS]
        if self.cfg.model.bundle is not None:
            dirs.append(self.cfg.model.bundle)
        return [d for d in dirs if d.is_dir()]

    def open(self, source: ModelSource) -> ModelSlot:
        return boot.open_source(self.cfg, self.paths, source)

    def second_copy(self) -> ModelSlot | None:
        """Another instance of the running model, for the updater's thread alone (the
        running one's interpreter belongs to the main loop)."""
        a = self.active
        if a is None:
            return None
        try:
            copy = ModelSlot.from_verified(
                a.bundle, machine_id=self.cfg.machine_id, events=self.cfg.events,
                num_threads=self.cfg.model.threads,
            )
            if self.personaliser is not None:
                self.personaliser.apply(copy)  # judged as it runs: with its local threshold
            return copy
        except Exception as exc:
            log.warning("canary: cannot load a second copy of the running model: %s", exc)
            return None

    def publish(
        self, state: UpdateState, *, previous: str | None = None, reason: str | None = None,
        deployment_id: str | None = None, candidate: str | None = None,
        progress: Progress | None = None, canary: CanaryFigures | None = None,
        event: bool = True,
    ) -> None:
        """Report ``state``; ``previous`` defaults to the version the pointer can go back to."""
        if previous is None:
            prev = None if self.pointer is None else self.pointer.previous
            previous = boot.slot_version(boot.source_dir(self.cfg, self.paths, prev))
        try:
            self.reporter.publish(
                state, active=self.version, previous=previous, reason=reason,
                deployment_id=deployment_id, candidate=candidate, progress=progress,
                canary=canary, event=event,
            )
        except Exception:  # a report must never stop an update step
            log.exception("could not publish the update report (%s)", state)

    def reject(
        self, dep: Deployment, reason: str, *, lasting: bool = True,
        canary: CanaryFigures | None = None,
    ) -> None:
        """Report ``dep`` rejected; ``lasting``: never take it again (not for a full disk)."""
        if lasting:
            self.remember(dep.deployment_id)
        self.publish("rejected", reason=reason, deployment_id=dep.deployment_id,
                     candidate=dep.model_version, canary=canary)


def disk_reason(exc: OSError) -> str:
    """A disk fault as a rejection reason."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full: {exc.strerror or exc}"
    return f"disk error: {exc.strerror or exc} ({exc.filename or 'state_dir'})"
