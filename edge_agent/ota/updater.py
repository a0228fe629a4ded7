"""The gateway's over-the-air updater: deployment → download → verify → canary → switch →
probation, each step surviving a power cut, in a thread of its own.

The agent (``edge_agent.agent``) builds one :class:`Updater` from the
:class:`~edge_agent.ota.boot.Startup` it started on, attaches it to the uplink's downlink,
feeds it the clean rows it scores (:meth:`Updater.record`) and its scoring errors, and asks
it every turn of the main loop for a model to swap in (:meth:`Updater.take_ready`); after
``Agent.swap_model`` it calls :meth:`Updater.swapped`. Everything else happens here, off the
main loop:

1. downloading: a deployment arrives retained on the machine's or a group's topic; its
   signature is checked before it is parsed, then :func:`~edge_agent.ota.checks.precheck`;
   its chunks are asked for a window at a time (``edge_agent.ota.download``), each checked
   against the signed deployment as it arrives and kept in staging;
2.-4. verifying, canary, switch: ``edge_agent.ota.install``;
5. probation (``edge_agent.ota.probation``), then mark good or roll back
   (``edge_agent.ota.rollback``).

Paho's thread only queues what arrives (bounded in bytes). A deployment that arrives during
probation waits for its end; a newer one replaces a download in progress. Every step is
reported (``edge_agent.ota.report``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.bundle.verify import load_public_key
from edge_agent.config.model import AgentConfig
from edge_agent.deliver.downlink import Inbound
from edge_agent.logs import Throttle
from edge_agent.model_slot import ModelSlot
from edge_agent.ota import boot
from edge_agent.ota.assemble import LocalFiles
from edge_agent.ota.canary import History
from edge_agent.ota.checks import BYTES_PER_MIB, DiskRefusal, precheck
from edge_agent.ota.download import Download
from edge_agent.ota.install import install
from edge_agent.ota.ledger import Handover, Ledger, disk_reason
from edge_agent.ota.pointer import target_slot
from edge_agent.ota.probation import Probation
from edge_agent.ota.protocol import (
    Deployment,
    DeploymentError,
    group_deployment_topic,
    machine_deployment_topic,
    open_deployment,
    parse_chunk_topic,
    parse_time,
)
from edge_agent.ota.report import Reporter
from edge_agent.ota.rollback import mark_good, roll_back, undo_switch
from edge_agent.ota.staging import Staging, remove_others
from edge_agent.pipeline import WindowBatch
from edge_agent.recent_rows import RecentRows
from edge_agent.service.supervisor import TaskHealth, start_supervised

log = logging.getLogger("edge_agent.ota")

F64 = npt.NDArray[np.float64]
THREAD_NAME = "edge-ota-updater"
TICK_S = 0.5  # the thread looks at probation and stalled downloads at least this often
MAX_QUEUED_BYTES = 16 * BYTES_PER_MIB  # inbound payloads waiting for the thread
MAX_HISTORY_ROWS = 200_000  # canary rows kept at most, whatever canary_s and the period
LOG_EVERY_S = 300.0  # a fault that repeats every tick is logged this rarely
STOP_JOIN_S = 2.0  # a canary still running then is left to end with the process (daemon)


class Subscriptions(Protocol):
    """What the updater needs of the uplink (its downlink)."""

    def subscribe(self, topic_filter: str, handler: Callable[[Inbound], None]) -> None: ...

    def unsubscribe(self, topic_filter: str) -> None: ...


class Updater:
    """Over-the-air updates for one agent; see the module docstring."""

    def __init__(self, cfg: AgentConfig, startup: boot.Startup, reporter: Reporter) -> None:
        assert cfg.mqtt is not None, "[ota] enabled needs [mqtt] (the config checks it)"
        self.cfg = cfg
        self.prefix = cfg.mqtt.topic_prefix
        self.ledger = Ledger(cfg, startup, reporter)
        self.health = TaskHealth("ota updater")
        self._throttle = Throttle(log, LOG_EVERY_S)
        self._startup = startup
        self._keys: list[Ed25519PublicKey] = [load_public_key(k) for k in cfg.model.trusted_keys]
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
        self._lock = threading.Lock()  # guards the hand-over and the history ring
        self._ready: Handover | None = None
        self._handed: Handover | None = None  # taken by the main loop, not yet swapped
        self._history: RecentRows | None = None
        self._probation: Probation | None = None
        self._history_for(startup.slot)

    # --- the main loop's side ---------------------------------------------------------------
    def start(self, subs: Subscriptions) -> None:
        """Report where this gateway stands, subscribe to its deployment topics, start."""
        self._report_startup()
        self.attach(subs)
        self._thread = start_supervised(THREAD_NAME, self._run, self._stop, self.health)

    def attach(self, subs: Subscriptions) -> None:
        """Take deployments from ``subs`` (a new uplink after a reload: a download in progress
        asks it for its chunks when it next finds itself stalled)."""
        self._subs = subs
        self._subscribe(self.deployment_topics())

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
        """Rows the running model just scored (in its channel order) and what they made."""
        if ts.shape[0]:
            with self._lock:
                if self._history is not None:
                    self._history.append(ts, rows)
        p = self._probation
        if p is not None and batch is not None:
            p.record(batch)

    def scoring_failed(self) -> None:
        p = self._probation
        if p is not None:
            p.error()

    def take_ready(self) -> Handover | None:
        """A model to swap in now, if there is one (each is given once)."""
        with self._lock:
            h, self._ready = self._ready, None
            if h is not None:
                self._handed = h
        return h

    def swapped(self, h: Handover) -> None:
        """The main loop swapped ``h`` in."""
        led = self.ledger
        previous = led.version
        led.source = None if led.pointer is None else led.pointer.active
        led.active = h.slot
        self._history_for(h.slot)
        if h.kind == "update":
            was = (h.canary or {}).get("active_alert_share")
            self._probation = Probation(
                self.cfg.ota, baseline_share=float(was) if isinstance(was, int | float) else None
            )
            led.publish("probation", reason=h.reason, deployment_id=h.deployment_id,
                        canary=h.canary, previous=previous)
        else:
            led.publish("rolled_back", reason=h.why, deployment_id=h.deployment_id,
                        previous=previous)
        with self._lock:
            self._handed = None

    def swap_failed(self, h: Handover, err: BaseException) -> None:
        """The main loop could not swap ``h`` in (the running model goes on)."""
        log.error("swapping in %s failed: %r", h.slot.version, err)
        undo_switch(self.ledger, h, err)
        with self._lock:
            self._handed = None

    # --- the updater's thread -----------------------------------------------------------------
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
        """A bug in one step rejects the update in progress; the updater and agent go on."""
        try:
            step(*args)
        except Exception as err:
            log.exception("update step failed unexpectedly")
            if self._job is not None:
                self._abandon(self._job, f"internal error: {err!r}", lasting=False)

    def _inbound(self, msg: Inbound) -> None:
        """Paho's thread: queue it, never block (over the cap it is dropped: asked again)."""
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
        if job is not None and job.stalled(now):
            log.info("deployment %s: no chunk for a while; asking the broker again", job.id)
            job.last_chunk = now
            self._subscribe(job.asked_topics())
        p = self._probation
        if p is None or self._busy():
            return
        good, why = p.verdict()
        if good is None:
            return
        try:
            if good:
                mark_good(self.ledger, why)
            else:
                self._hand(roll_back(self.ledger, why))
        except OSError as err:  # the pointer cannot be written (disk full): try again later
            self._throttle.log(logging.ERROR, "pointer", "cannot end probation (%s): %s; "
                               "trying again", why, err)
            return
        self._probation = None
        self._resume_deferred()

    # --- 1. downloading -------------------------------------------------------------------------
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
            self._drop(job)
        if self._probation is not None or self._busy():
            self._deferred[topic] = payload
            log.info("deployment %s waits for the update in progress", dep.deployment_id)
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
            self.ledger.publish("rejected", reason=f"deployment on {topic}: {exc}")
            return None
        if dep.deployment_id in self.ledger.rejected:
            log.debug("deployment %s was refused before; ignored", dep.deployment_id)
            return None
        active = self.ledger.active
        if active is not None and active.digest == dep.manifest_sha256:
            log.debug("deployment %s: that model runs already", dep.deployment_id)
            last = self.ledger.reporter.last
            if last is None or last.state not in ("active", "probation"):
                # Say so, so the desk waiting for this deployment sees it done.
                self.ledger.publish("active", reason="this model runs already", event=False,
                                    deployment_id=dep.deployment_id)
            return None
        return dep

    def _begin(self, dep: Deployment) -> None:
        led = self.ledger
        try:
            precheck(dep, led.gateway(), time.time(), led.paths.root)
            remove_others(led.paths.staging, dep.deployment_id)
            target = target_slot(led.pointer)
            if led.pointer is not None and led.pointer.previous == target:
                # That slot is about to be overwritten: it is no rollback target any more.
                led.write_pointer(led.pointer.model_copy(
                    update={"previous": None, "previous_deployment_id": None}))
            staging = Staging(led.paths.staging, dep)
            staging.open()
        except DeploymentError as exc:
            led.reject(dep, str(exc), lasting=not isinstance(exc, DiskRefusal))
            return
        except OSError as exc:
            led.reject(dep, disk_reason(exc), lasting=False)
            return
        job = Download(dep, staging, LocalFiles(led.local_dirs()), target, self.prefix)
        self._job = job
        led.publish("downloading", deployment_id=dep.deployment_id,
                    candidate=dep.model_version, progress=job.progress())
        self._advance(job)

    def _on_chunk(self, job: Download, sha: str, index: int, payload: bytes) -> None:
        done = job.got(sha, index)
        if done is not None:
            self._unsubscribe([done])
        if not job.staging.wants(sha, index):
            return
        try:
            job.staging.put(sha, index, payload)
        except DeploymentError as exc:  # a tampered chunk
            self._abandon(job, str(exc), lasting=True)
            return
        except OSError as exc:  # disk full or failing: the agent goes on, the update may not
            self._abandon(job, disk_reason(exc), lasting=False)
            return
        if not job.complete and job.progress_due(time.monotonic()):
            self.ledger.publish("downloading", deployment_id=job.id, event=False,
                                candidate=job.deployment.model_version, progress=job.progress())
        self._advance(job)

    def _advance(self, job: Download) -> None:
        """Ask for the next chunks, or install once every chunk is held."""
        if not job.complete:
            self._subscribe(job.to_ask())
            return
        self._unsubscribe(job.asked_topics())
        job.asked.clear()
        self._job = None
        self._hand(install(self.ledger, job, self._history_copy()))

    # --- helpers --------------------------------------------------------------------------------
    def _hand(self, h: Handover | None) -> None:
        if h is not None:
            with self._lock:
                self._ready = h

    def _busy(self) -> bool:
        with self._lock:
            return self._ready is not None or self._handed is not None

    def _resume_deferred(self) -> None:
        waiting, self._deferred = self._deferred, {}
        for topic, payload in waiting.items():
            self._on_deployment(topic, payload)

    def _subscribe(self, topics: list[str]) -> None:
        if self._subs is not None:
            for t in topics:
                self._subs.subscribe(t, self._inbound)

    def _unsubscribe(self, topics: list[str]) -> None:
        if self._subs is not None:
            for t in topics:
                self._subs.unsubscribe(t)

    def _abandon(self, job: Download, reason: str, *, lasting: bool) -> None:
        self._job = None
        self._drop(job)
        self.ledger.reject(job.deployment, reason, lasting=lasting)

    def _drop(self, job: Download) -> None:
        """Abandon a download: its subscriptions and its staging."""
        self._unsubscribe(job.asked_topics())
        job.asked.clear()
        job.staging.remove()

    def _history_for(self, slot: ModelSlot | None) -> None:
        """The canary's ring, sized for ``canary_s`` of ``slot``'s rows (none without one)."""
        with self._lock:
            if slot is None:
                self._history = None
                return
            period = slot.manifest.sampling.period_s
            rows = int(min(MAX_HISTORY_ROWS, max(1, np.ceil(self.cfg.ota.canary_s / period))))
            old = self._history
            self._history = (RecentRows(rows, slot.channels) if old is None
                             else old.resized(rows, slot.channels))

    def _history_copy(self) -> History | None:
        with self._lock:
            hist = self._history
            if hist is None or not len(hist):
                return None
            ts, rows = hist.latest()  # type: ignore[misc]
            return History(ts, rows, list(hist.channels))

    def _report_startup(self) -> None:
        s, led = self._startup, self.ledger
        if s.rolled_back is not None:
            led.publish("rolled_back", reason=s.rolled_back, previous=s.rolled_back_version)
        elif s.pointer is not None and s.pointer.state == "probation" and s.slot is not None:
            self._probation = Probation(self.cfg.ota)
            led.publish("probation", reason=f"agent start {s.pointer.boots} on probation",
                        deployment_id=s.pointer.deployment_id)
        elif s.slot is None:
            led.publish("waiting", reason="waiting for model")
        else:
            led.publish("active", event=False,
                        deployment_id=None if s.pointer is None else s.pointer.deployment_id)


def _newer(a: Deployment, b: Deployment) -> bool:
    """Release ``a`` is newer than ``b`` (by created_at, then issue time)."""
    return (parse_time(a.created_at), parse_time(a.issued_at)) > (
        parse_time(b.created_at), parse_time(b.issued_at))
