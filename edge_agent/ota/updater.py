"""The gateway's over-the-air updater: deployment → download → verify → canary → switch →
probation, each step surviving a power cut, in a thread of its own.

The agent (``edge_agent.agent``) builds one :class:`Updater` from the :class:`~edge_agent.
ota.boot.Startup` it started on, attaches it to the uplink's downlink, feeds it the clean rows
it scores (:meth:`Updater.record`) and its scoring errors, and asks it every turn of the main
loop for a model to swap in (:meth:`Updater.take_ready`); after ``Agent.swap_model`` it
calls :meth:`Updater.swapped`. Everything else happens here, off the main loop:

1. downloading: a deployment arrives retained on the machine's or a group's topic; its
   signature is checked before it is parsed, then :func:`~edge_agent.ota.checks.precheck`;
   its chunks are asked for a window at a time (``edge_agent.ota.download``) and each is
   checked against the signed deployment as it arrives and kept in staging;
2. verifying: the slot is assembled (``edge_agent.ota.assemble``) and checked
   (:func:`~edge_agent.ota.checks.verify_slot`);
3. canary: the candidate is loaded and scores the recent rows next to a second instance of the
   running model (``edge_agent.ota.canary``);
4. switch: the pointer is written (new slot active, on probation, floor raised); then the main
   loop swaps the model in;
5. probation (``edge_agent.ota.probation``): a bound crossed rolls back to the previous slot
   (the pointer first, then the swap); probation passed marks the model good.

The paho thread only queues what arrives (bounded in bytes). Deployments that arrive during
probation wait for its end. Every step is reported (``edge_agent.ota.report``).
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.bundle.verify import load_public_key
from edge_agent.config.model import AgentConfig
from edge_agent.deliver.downlink import Inbound
from edge_agent.events import UpdateState, iso
from edge_agent.model_slot import ModelSlot
from edge_agent.ota import boot
from edge_agent.ota.assemble import LocalFiles, assemble
from edge_agent.ota.canary import Figures, History, judge
from edge_agent.ota.checks import BYTES_PER_MIB, DiskRefusal, Gateway, precheck, verify_slot
from edge_agent.ota.download import Download
from edge_agent.ota.pointer import (
    SLOTS,
    Floor,
    OtaPaths,
    Pointer,
    higher_floor,
    read_rejected,
    remember_rejected,
    target_slot,
    write_pointer,
)
from edge_agent.ota.probation import Probation
from edge_agent.ota.protocol import (
    Deployment,
    DeploymentError,
    Progress,
    group_deployment_topic,
    machine_deployment_topic,
    open_deployment,
    parse_chunk_topic,
    parse_time,
)
from edge_agent.ota.report import Reporter
from edge_agent.ota.staging import Staging, remove_others
from edge_agent.pipeline import WindowBatch
from edge_agent.recent_rows import RecentRows
from edge_agent.service.supervisor import RestartPolicy, TaskHealth, start_supervised

log = logging.getLogger("edge_agent.ota")

F64 = npt.NDArray[np.float64]
THREAD_NAME = "edge-ota-updater"
TICK_S = 0.5  # the thread looks at probation and stalled downloads at least this often
MAX_QUEUED_BYTES = 16 * BYTES_PER_MIB  # inbound payloads waiting for the thread
MAX_HISTORY_ROWS = 200_000  # canary rows kept at most, whatever canary_s and the period
STOP_JOIN_S = 5.0


class Subscriptions(Protocol):
    """What the updater needs of the uplink's downlink."""

    def subscribe(self, topic_filter: str, handler: Callable[[Inbound], None]) -> None: ...

    def unsubscribe(self, topic_filter: str) -> None: ...


@dataclass(frozen=True)
class Handover:
    """A loaded model for the main loop to swap in."""

    slot: ModelSlot
    reason: str
    kind: Literal["update", "rollback"]
    deployment_id: str | None
    canary: Figures | None = None
    why: str | None = None  # a rollback's reason


class Updater:
    """Over-the-air updates for one agent; see the module docstring."""

    def __init__(self, cfg: AgentConfig, startup: boot.Startup, reporter: Reporter) -> None:
        self.cfg = cfg
        self.paths = OtaPaths.under(cfg.state_dir)
        self.prefix = cfg.mqtt.topic_prefix if cfg.mqtt is not None else "edge"
        self.reporter = reporter
        self.health = TaskHealth("ota updater", RestartPolicy())
        self._keys: list[Ed25519PublicKey] = [load_public_key(k) for k in cfg.model.trusted_keys]
        self._pointer = startup.pointer
        self._startup = startup
        self._rejected = read_rejected(self.paths)
        self._refused_payloads: set[bytes] = set()  # unopenable deployments seen this run
        self._queue: queue.Queue[Inbound] = queue.Queue()
        self._qlock = threading.Lock()
        self._queued_bytes = 0
        self.dropped = 0  # inbound messages dropped because the queue was full
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._subs: Subscriptions | None = None
        self._job: Download | None = None
        self._deferred: dict[str, bytes] = {}  # deployments waiting for probation's end
        self._ready: Handover | None = None
        self._handed: Handover | None = None  # handed to the main loop, not yet swapped
        self._hlock = threading.Lock()
        self._probation: Probation | None = None
        self._history: RecentRows | None = None
        self._active: ModelSlot | None = None
        self._source = startup.source
        self._set_active(startup.slot)

    # --- main thread ----------------------------------------------------------------------
    def start(self, subs: Subscriptions) -> None:
        """Report where this gateway stands, subscribe to its deployment topics, start."""
        self._subs = subs
        self._report_startup()
        for topic in self.deployment_topics():
            subs.subscribe(topic, self._inbound)
        self._thread = start_supervised(THREAD_NAME, self._run, self._stop, self.health)

    def deployment_topics(self) -> list[str]:
        return [
            machine_deployment_topic(self.prefix, self.cfg.machine_id),
            *(group_deployment_topic(self.prefix, g) for g in self.cfg.ota.groups),
        ]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_JOIN_S)
            self._thread = None

    def record(self, ts: F64, rows: F64, batch: WindowBatch | None) -> None:
        """Rows the running model just scored (its channel order) and what they made."""
        hist = self._history
        if hist is not None and ts.shape[0]:
            with self._hlock:
                hist.append(ts, rows)
        p = self._probation
        if p is not None and batch is not None:
            p.record(batch)

    def scoring_failed(self) -> None:
        p = self._probation
        if p is not None:
            p.error()

    def take_ready(self) -> Handover | None:
        """A model to swap in now, if there is one (at most once each)."""
        with self._hlock:
            h, self._ready = self._ready, None
            self._handed = h or self._handed
        return h

    def swapped(self, h: Handover) -> None:
        """The main loop swapped ``h`` in."""
        with self._hlock:
            self._handed = None
        previous = self._version()
        self._source = self._pointer.active if self._pointer is not None else None
        self._set_active(h.slot)
        if h.kind == "update":
            self._probation = Probation(self.cfg.ota)
            self._publish("probation", reason=h.reason, deployment_id=h.deployment_id,
                          canary=h.canary, previous=previous)
        else:
            self._publish("rolled_back", reason=h.why, deployment_id=h.deployment_id,
                          previous=previous)

    def swap_failed(self, h: Handover, err: BaseException) -> None:
        """The main loop could not swap ``h`` in: put the pointer back, report."""
        with self._hlock:
            self._handed = None
        log.error("swapping in %s failed: %r", h.slot.version, err)
        if h.kind == "update" and self._pointer is not None:
            old = self._pointer
            back = Pointer(
                active=old.previous, previous=old.active, state="active", boots=0,
                activated_at=iso(time.time()), floor=old.floor, floor_version=old.floor_version,
                deployment_id=old.previous_deployment_id,
            )
            self._write_pointer(back)
            self._reject_id(h.deployment_id, f"the model could not be swapped in: {err}")

    # --- the updater's thread ---------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg: Inbound | None = self._queue.get(timeout=TICK_S)
            except queue.Empty:
                msg = None
            if msg is not None:
                with self._qlock:
                    self._queued_bytes -= len(msg.payload)
                self._guard(self._dispatch, msg)
            self._guard(self._tick)

    def _guard(self, step: Callable[..., None], *args: object) -> None:
        """A bug in one step rejects the update in progress; the updater and the agent go on."""
        try:
            step(*args)
        except Exception as err:
            log.exception("update step failed unexpectedly")
            job, self._job = self._job, None
            if job is not None:
                self._cleanup(job)
                self._publish("rejected", reason=f"internal error: {err!r}",
                              deployment_id=job.id, candidate=job.deployment.model_version)

    def _inbound(self, msg: Inbound) -> None:
        """Paho's thread: queue it, never block (a full queue drops; asked again later)."""
        n = len(msg.payload)
        with self._qlock:
            if self._queued_bytes + n > MAX_QUEUED_BYTES:
                self.dropped += 1
                return
            self._queued_bytes += n
        self._queue.put(msg)

    def _dispatch(self, msg: Inbound) -> None:
        if msg.topic in self.deployment_topics():
            self._on_deployment(msg.topic, msg.payload)
            return
        chunk = parse_chunk_topic(self.prefix, msg.topic)
        if chunk is not None and self._job is not None:
            self._on_chunk(self._job, *chunk, msg.payload)

    def _tick(self) -> None:
        job = self._job
        now = time.monotonic()
        if job is not None and job.stalled(now) and self._subs is not None:
            log.info("deployment %s: no chunk for a while; asking the broker again", job.id)
            job.last_chunk = now
            for topic in job.asked_topics():
                self._subs.subscribe(topic, self._inbound)
        if self._probation is not None and self._busy() is False:
            self._check_probation(self._probation)

    # --- 1. downloading ---------------------------------------------------------------------
    def _on_deployment(self, topic: str, payload: bytes) -> None:
        dep = self._open(topic, payload)
        if dep is None:
            return
        job = self._job
        if job is not None:
            if job.id == dep.deployment_id or not _newer(dep, job.deployment):
                return
            log.info("deployment %s replaces %s in progress", dep.deployment_id, job.id)
            self._job = None
            self._cleanup(job)
        if self._probation is not None or self._busy():
            self._deferred[topic] = payload
            log.info("deployment %s waits for the running update to finish", dep.deployment_id)
            return
        self._begin(dep)

    def _open(self, topic: str, payload: bytes) -> Deployment | None:
        """The deployment in ``payload`` if it is one to act on (signature checked first)."""
        if not payload or payload in self._refused_payloads:
            return None  # cleared by the desk, or refused already in this run
        try:
            dep = open_deployment(payload, self._keys)
        except DeploymentError as exc:
            self._refused_payloads.add(payload)
            self._publish("rejected", reason=f"deployment on {topic}: {exc}")
            return None
        if dep.deployment_id in self._rejected:
            log.debug("deployment %s was refused before; ignored", dep.deployment_id)
            return None
        active = self._active
        if active is not None and active.digest == dep.manifest_sha256:
            log.debug("deployment %s: that model is running already", dep.deployment_id)
            return None
        return dep

    def _begin(self, dep: Deployment) -> None:
        try:
            precheck(dep, self._gateway(), time.time(), self.paths.root)
            remove_others(self.paths.staging, dep.deployment_id)
            target = target_slot(self._pointer)
            if self._pointer is not None and self._pointer.previous == target:
                # That slot is about to be overwritten: it is no rollback target any more.
                self._write_pointer(self._pointer.model_copy(
                    update={"previous": None, "previous_deployment_id": None}))
            staging = Staging(self.paths.staging, dep)
            staging.open()
        except DeploymentError as exc:
            self._reject(dep, str(exc), lasting=not isinstance(exc, DiskRefusal))
            return
        except OSError as exc:
            self._reject(dep, _disk_reason(exc), lasting=False)
            return
        job = Download(dep, staging, LocalFiles(self._local_dirs()), target, self.prefix)
        self._job = job
        self._publish("downloading", deployment_id=dep.deployment_id,
                      candidate=dep.model_version, progress=job.progress())
        self._advance(job)

    def _on_chunk(self, job: Download, sha: str, index: int, payload: bytes) -> None:
        done = job.got(sha, index)
        if done is not None and self._subs is not None:
            self._subs.unsubscribe(done)
        if not job.staging.wants(sha, index):
            return
        try:
            job.staging.put(sha, index, payload)
        except DeploymentError as exc:
            self._job = None
            self._reject(job.deployment, str(exc), job=job)
            return
        except OSError as exc:
            self._job = None
            self._reject(job.deployment, _disk_reason(exc), lasting=False, job=job)
            return
        now = time.monotonic()
        if not job.complete and job.progress_due(now):
            self._publish("downloading", deployment_id=job.id, event=False,
                          candidate=job.deployment.model_version, progress=job.progress())
        self._advance(job)

    def _advance(self, job: Download) -> None:
        if job.complete:
            for topic in job.asked_topics():
                if self._subs is not None:
                    self._subs.unsubscribe(topic)
            job.asked.clear()
            self._job = None
            self._install(job)
            return
        if self._subs is not None:
            for topic in job.to_ask():
                self._subs.subscribe(topic, self._inbound)

    # --- 2. verifying, 3. canary, 4. switch ---------------------------------------------------
    def _install(self, job: Download) -> None:
        dep = job.deployment
        cand = dep.model_version
        self._publish("verifying", deployment_id=dep.deployment_id, candidate=cand,
                      progress=job.progress())
        try:
            slot_dir = assemble(self.paths, job.target, job.staging, job.local)
            bundle = verify_slot(slot_dir, dep, self.cfg.model.trusted_keys, self._gateway())
        except DeploymentError as exc:
            self._reject(dep, str(exc), job=job)
            return
        except OSError as exc:
            self._reject(dep, _disk_reason(exc), lasting=False, job=job)
            return
        self._publish("canary", deployment_id=dep.deployment_id, candidate=cand)
        try:
            new = ModelSlot.from_verified(
                bundle, machine_id=self.cfg.machine_id, events=self.cfg.events,
                num_threads=self.cfg.model.threads,
            )
        except Exception as exc:
            self._reject(dep, f"canary: the model fails to load: {exc}", job=job)
            return
        try:
            new.warm_up()
        except Exception as exc:
            self._reject(dep, f"canary: the model fails to run: {exc}", job=job)
            return
        verdict = judge(new, self._active_copy(), self._history_copy(), self.cfg.ota)
        log.info("deployment %s canary figures: %s", dep.deployment_id, verdict.figures)
        if not verdict.passed:
            self._reject(dep, verdict.reason or "canary failed", job=job, canary=verdict.figures)
            return
        self._switch(job, new, verdict.figures)

    def _switch(self, job: Download, new: ModelSlot, figures: Figures) -> None:
        dep = job.deployment
        old = self._pointer
        raised = higher_floor(self._floor(), new.manifest.created_at, new.version)
        pointer = Pointer(
            active=job.target, previous=self._source, state="probation", boots=0,
            activated_at=iso(time.time()), floor=raised[0], floor_version=raised[1],
            deployment_id=dep.deployment_id,
            previous_deployment_id=None if old is None else old.deployment_id,
        )
        try:
            self._write_pointer(pointer)
        except OSError as exc:
            self._reject(dep, _disk_reason(exc), lasting=False, job=job)
            return
        job.staging.remove()
        log.info("switched to %s (slot %s) on probation", new.version, job.target)
        with self._hlock:
            self._ready = Handover(
                new, f"over-the-air update, deployment {dep.deployment_id}", "update",
                dep.deployment_id, figures,
            )

    # --- 5. probation ---------------------------------------------------------------------------
    def _check_probation(self, p: Probation) -> None:
        good, why = p.verdict()
        if good is None:
            return
        self._probation = None
        pointer = self._pointer
        if good:
            if pointer is not None:
                self._write_pointer(pointer.model_copy(update={"state": "active", "boots": 0}))
            self._publish("active", reason=f"marked good after {why}",
                          deployment_id=None if pointer is None else pointer.deployment_id)
            self._resume_deferred()
            return
        self._roll_back(why)

    def _roll_back(self, why: str) -> None:
        pointer = self._pointer
        back = None if pointer is None else pointer.previous
        slot: ModelSlot | None = None
        problem = "there is no previous model"
        if pointer is not None and back is not None:
            try:
                slot = boot.open_source(self.cfg, self.paths, back)
                slot.warm_up()
            except Exception as exc:
                slot, problem = None, f"the previous model cannot be loaded: {exc}"
        if pointer is None or slot is None:
            log.error("probation failed (%s) but %s: keeping the new model", why, problem)
            if pointer is not None:
                self._write_pointer(pointer.model_copy(update={"state": "active", "boots": 0}))
            self._publish("active", reason=f"rollback wanted ({why}) but {problem}")
            self._resume_deferred()
            return
        bad_id = pointer.deployment_id
        self._write_pointer(Pointer(
            active=back, previous=pointer.active, state="active", boots=0,
            activated_at=iso(time.time()), floor=pointer.floor,
            floor_version=pointer.floor_version, deployment_id=pointer.previous_deployment_id,
            previous_deployment_id=bad_id,
        ))
        if bad_id is not None:
            self._rejected = remember_rejected(self.paths, bad_id, self._rejected)
        log.error("rolling back from %s to %s: %s", self._version(), slot.version, why)
        with self._hlock:
            self._ready = Handover(slot, f"rollback: {why}", "rollback", bad_id, why=why)

    def _resume_deferred(self) -> None:
        waiting, self._deferred = self._deferred, {}
        for topic, payload in waiting.items():
            self._on_deployment(topic, payload)

    # --- helpers --------------------------------------------------------------------------------
    def _busy(self) -> bool:
        with self._hlock:
            return self._ready is not None or self._handed is not None

    def _set_active(self, slot: ModelSlot | None) -> None:
        self._active = slot
        if slot is None:
            self._history = None
            return
        period = slot.manifest.sampling.period_s
        rows = int(min(MAX_HISTORY_ROWS, max(1, np.ceil(self.cfg.ota.canary_s / period))))
        with self._hlock:
            old = self._history
            self._history = (
                RecentRows(rows, slot.channels) if old is None else old.resized(rows, slot.channels)
            )

    def _version(self) -> str | None:
        return None if self._active is None else self._active.version

    def _history_copy(self) -> History | None:
        with self._hlock:
            hist = self._history
            held = None if hist is None or not len(hist) else hist.latest()
            channels = [] if hist is None else list(hist.channels)
        return None if held is None else History(held[0], held[1], channels)

    def _active_copy(self) -> ModelSlot | None:
        """A second instance of the running model, for this thread alone."""
        a = self._active
        if a is None:
            return None
        try:
            return ModelSlot.from_verified(
                a.bundle, machine_id=self.cfg.machine_id, events=self.cfg.events,
                num_threads=self.cfg.model.threads,
            )
        except Exception as exc:
            log.warning("canary: cannot load a second copy of the running model: %s", exc)
            return None

    def _gateway(self) -> Gateway:
        floor, version = self._floor()
        replay = not self.cfg.delivered_channels()
        return Gateway(
            machine_id=self.cfg.machine_id, groups=self.cfg.ota.groups, floor=floor,
            floor_version=version,
            max_bundle_bytes=int(self.cfg.ota.max_bundle_mb * BYTES_PER_MIB),
            delivered_channels=None if replay else self.cfg.delivered_channels(),
        )

    def _floor(self) -> Floor:
        """The newest release ever activated: the pointer's floor, or the running model if it
        is newer (``[model] bundle`` before the first update counts as activated)."""
        p = self._pointer
        floor: Floor = (None, None) if p is None else (p.floor, p.floor_version)
        a = self._active
        return floor if a is None else higher_floor(floor, a.manifest.created_at, a.version)

    def _local_dirs(self) -> list[Path]:
        dirs = [self.paths.slot(s) for s in SLOTS]
        if self.cfg.model.bundle is not None:
            dirs.append(self.cfg.model.bundle)
        return [d for d in dirs if d.is_dir()]

    def _write_pointer(self, pointer: Pointer) -> None:
        write_pointer(self.paths, pointer)
        self._pointer = pointer

    def _reject(
        self, dep: Deployment, reason: str, *, lasting: bool = True, job: Download | None = None,
        canary: Figures | None = None,
    ) -> None:
        if job is not None:
            self._cleanup(job)
        if lasting:
            self._rejected = remember_rejected(self.paths, dep.deployment_id, self._rejected)
        self._publish("rejected", reason=reason, deployment_id=dep.deployment_id,
                      candidate=dep.model_version, canary=canary)

    def _reject_id(self, deployment_id: str | None, reason: str) -> None:
        if deployment_id is not None:
            self._rejected = remember_rejected(self.paths, deployment_id, self._rejected)
        self._publish("rejected", reason=reason, deployment_id=deployment_id)

    def _cleanup(self, job: Download) -> None:
        if self._subs is not None:
            for topic in job.asked_topics():
                self._subs.unsubscribe(topic)
        job.asked.clear()
        job.staging.remove()

    def _publish(
        self, state: UpdateState, *, previous: str | None = None, reason: str | None = None,
        deployment_id: str | None = None, candidate: str | None = None,
        progress: Progress | None = None, canary: Figures | None = None, event: bool = True,
    ) -> None:
        if previous is None:
            prev = None if self._pointer is None else self._pointer.previous
            previous = boot.slot_version(boot.source_dir(self.cfg, self.paths, prev))
        try:
            self.reporter.publish(
                state, active=self._version(), previous=previous, reason=reason,
                deployment_id=deployment_id, candidate=candidate, progress=progress,
                canary=canary, event=event,
            )
        except Exception:  # a report must never stop an update step
            log.exception("could not publish the update report (%s)", state)

    def _report_startup(self) -> None:
        s = self._startup
        if s.rolled_back is not None:
            self._publish("rolled_back", reason=s.rolled_back, previous=s.rolled_back_version)
        elif s.pointer is not None and s.pointer.state == "probation" and s.slot is not None:
            self._probation = Probation(self.cfg.ota)
            self._publish("probation", reason=f"agent start {s.pointer.boots} on probation",
                          deployment_id=s.pointer.deployment_id)
        elif s.slot is None:
            self._publish("waiting", reason="waiting for model")
        else:
            self._publish("active", deployment_id=None if s.pointer is None
                          else s.pointer.deployment_id, event=False)


def _newer(a: Deployment, b: Deployment) -> bool:
    """Release ``a`` is newer than ``b`` (by created_at, then issue time)."""
    return (parse_time(a.created_at), parse_time(a.issued_at)) > (
        parse_time(b.created_at), parse_time(b.issued_at))


def _disk_reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full: {exc.strerror or exc}"
    return f"disk error: {exc.strerror or exc} ({exc.filename or 'state_dir'})"
