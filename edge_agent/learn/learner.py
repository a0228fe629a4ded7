"""The gateway's fleet-learning component: buffer, rounds, local training, delta, thresholds.

Pipeline position: beside the agent's main loop (``edge_agent.agent``), which builds one
:class:`Learner` when ``[learn] enabled``, hands it every scored push (:meth:`Learner.record`)
and every model it swaps in (:meth:`Learner.use_model`), and starts it on the uplink. From
there:

- the main loop's thread keeps the rows judged normal (``edge_agent.learn.select``) in the
  on-disk buffer (``edge_agent.learn.buffer``): cheap, batched writes;
- paho's thread only queues round announcements (``<prefix>/fleet/round``, retained);
- the learner's own daemon thread opens each announcement (fleet signature first,
  ``edge_agent.learn.rounds``) and, when it is for the running model, not answered before,
  the model is trainable and the buffer holds ``min_windows``, runs the round
  (``edge_agent.learn.train_round``) within the CPU-time and window budgets, its training in a
  child process at the lowest CPU priority (``edge_agent.learn.isolated``: a nice-19 thread
  would keep the main loop waiting for the interpreter lock on a busy gateway), puts the
  signed delta in the outbox (``<prefix>/<machine>/delta``, durable and in order), then
  stores the residual and the round id. With ``every_s`` it also runs rounds of its own on a
  schedule. Every outcome is reported
  (``edge_agent.learn.report``); a failure is caught, counted and logged, never fatal.

A round that cannot be answered yet (another model runs, too few windows) waits, and is
tried again as the model changes or the buffer grows, until its deadline.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.bundle.verify import load_public_key
from edge_agent.config.model import AgentConfig
from edge_agent.deliver.downlink import Inbound
from edge_agent.learn import report
from edge_agent.learn.buffer import BufferSettings, NormalBuffer
from edge_agent.learn.device_key import load_device_key
from edge_agent.learn.isolated import RoundInterrupted, train_in_child
from edge_agent.learn.jobs import RoundJob, Skip
from edge_agent.learn.personalise import Personaliser, ThresholdStore
from edge_agent.learn.residual import ResidualStore
from edge_agent.learn.round_log import RoundLog
from edge_agent.learn.rounds import RoundAnnouncement, RoundError, open_round, round_topic
from edge_agent.learn.select import NormalRows
from edge_agent.logs import Throttle
from edge_agent.model_slot import ModelSlot
from edge_agent.pipeline import WindowBatch
from edge_agent.service.supervisor import TaskHealth, start_supervised

log = logging.getLogger("edge_agent.learn")

F64 = npt.NDArray[np.float64]
LEARN_DIR = "learn"  # under state_dir: buffer/, residual.npz, rounds.json, thresholds.json
BUFFER_DIR = "buffer"
THREAD_NAME = "edge-learner"
TICK_S = 1.0  # the thread looks at waiting rounds and the schedule this often
MAX_QUEUED = 8  # announcements waiting for the thread (more are dropped: they are retained)
STOP_JOIN_S = 2.0  # a stop ends a training child within POLL_S; the thread follows
LOG_EVERY_S = 300.0
BYTES_PER_MIB = 1 << 20


class Subscriptions(Protocol):
    def subscribe(self, topic_filter: str, handler: Callable[[Inbound], None]) -> None: ...


class Learner:
    """Fleet learning for one agent; see the module docstring."""

    def __init__(self, cfg: AgentConfig, sink: report.MessageSink, wake: Callable[[], None],
                 metrics: report.LearnMetrics, *, wall: Callable[[], float] = time.time) -> None:
        assert cfg.mqtt is not None, "[learn] enabled needs [mqtt] (the config checks it)"
        learn = cfg.learn
        self.cfg = learn
        self.machine_id = cfg.machine_id
        self.topic = round_topic(cfg.mqtt.topic_prefix)
        root = cfg.state_dir / LEARN_DIR
        self.buffer = NormalBuffer(root / BUFFER_DIR, BufferSettings(
            learn.chunk_rows, learn.sample_every_s, int(learn.max_mb * BYTES_PER_MIB)))
        self.personaliser = Personaliser(
            ThresholdStore(root), lambda m: self.buffer.windows(m, learn.max_windows),
            quantile=learn.personal_quantile, min_windows=learn.personal_min_windows,
            on_apply=metrics.threshold_scale.set)
        self._stop = threading.Event()
        self.job = RoundJob(learn, cfg.machine_id, load_device_key(learn.device_key,
                            "learn.device_key"), self.buffer, ResidualStore(cfg.state_dir),
                            train=functools.partial(train_in_child, stop=self._stop))
        self.rounds = RoundLog(root)
        self.selector = NormalRows(learn.normal_score_ratio)
        self.metrics = metrics
        self.health = TaskHealth("learner")
        self.dropped = 0  # announcements dropped because the queue was full
        self._trusted = [load_public_key(k) for k in cfg.model.trusted_keys]
        self._sink, self._wall = sink, wall
        self.reporter = report.Reporter(cfg.machine_id, sink, wake, metrics, wall,
                                        self._version)
        self._throttle = Throttle(log, LOG_EVERY_S)
        self._model: ModelSlot | None = None
        self._inbox: queue.Queue[bytes] = queue.Queue(MAX_QUEUED)
        self._pending: RoundAnnouncement | None = None  # opened, waiting to be answered
        self._next_schedule = None if learn.every_s is None else wall() + learn.every_s
        self._thread: threading.Thread | None = None
        metrics.watch_buffer(lambda: self.buffer.stats().rows, lambda: self.buffer.stats().bytes)

    def _version(self) -> str | None:
        return None if self._model is None else self._model.version

    # --- the main loop's side ---------------------------------------------------------------
    def use_model(self, slot: ModelSlot | None) -> None:
        """``slot`` scores from now on (start, swap): its stored local threshold is applied."""
        old = self._model
        if old is not None and slot is not old:
            self.buffer.flush(old.manifest)
            self.job.forget()
        self.selector.reset()
        if slot is not None:
            self.personaliser.apply(slot, running=True)
        self._model = slot

    def record(self, ts: F64, rows: F64, batch: WindowBatch, *, fault: bool,
               open_episode: bool) -> None:
        """A scored push (clean rows in model channel order): keep its normal rows."""
        model = self._model
        if model is None or not ts.shape[0]:
            return
        try:
            keep = self.selector.keep(rows, batch, model.cascade.threshold.alert_threshold,
                                      fault=fault, open_episode=open_episode)
            self.buffer.add(ts, rows, keep, model.manifest)
        except Exception as err:  # the buffer is optional: scoring goes on
            self._throttle.log(logging.ERROR, "record", "learn buffer: rows not kept: %r", err,
                               exc_info=True)

    def flush(self) -> None:
        """Write the pending normal rows (the agent stops)."""
        if self._model is not None:
            self.buffer.flush(self._model.manifest)

    def start(self, subs: Subscriptions) -> None:
        self.attach(subs)
        self._thread = start_supervised(THREAD_NAME, self._run, self._stop, self.health)

    def attach(self, subs: Subscriptions) -> None:
        subs.subscribe(self.topic, self._inbound)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_JOIN_S)
            self._thread = None

    def _inbound(self, msg: Inbound) -> None:
        """Paho's thread: queue it, never block."""
        self.offer(msg.payload)

    def offer(self, payload: bytes) -> None:
        """An announcement's payload, as it arrived (any thread; dropped when the queue is
        full: the announcement is retained, the broker sends it again)."""
        try:
            self._inbox.put_nowait(payload)
        except queue.Full:
            self.dropped += 1

    # --- the learner's thread -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self.step(TICK_S)

    def step(self, wait_s: float) -> None:
        """One turn: take an announcement (waiting at most ``wait_s``), start a scheduled
        round if due, answer the waiting round if it can be. Runs in the learner's thread."""
        try:
            payload: bytes | None = self._inbox.get(timeout=wait_s) if wait_s > 0 else (
                self._inbox.get_nowait())
        except queue.Empty:
            payload = None
        if payload:  # an empty retained payload: the desk cleared the round
            self._guard(self._open, payload)
        self._guard(self._schedule)
        self._guard(self._answer)

    def _guard(self, step: Callable[..., None], *args: object) -> None:
        try:
            step(*args)
        except Exception as err:  # a bug here must not end the thread or the agent
            log.exception("learner step failed")
            self.reporter.refuse(None, f"internal error: {err!r}", outcome="failed")

    def _open(self, payload: bytes) -> None:
        try:
            a = open_round(payload, self._trusted)
        except RoundError as err:
            self.reporter.refuse(None, f"announcement on {self.topic}: {err}",
                                 key=str(hash(payload)))
            return
        if self.rounds.done(a.round_id):
            log.debug("round %s answered already (%s)", a.round_id,
                      self.rounds.outcome(a.round_id))
            return
        self._pending = a

    def _schedule(self) -> None:
        due = self._next_schedule
        model = self._model
        if due is None or self._wall() < due or model is None or self.cfg.every_s is None:
            return
        self._next_schedule = due + self.cfg.every_s
        if self._pending is None:
            self._pending = self.job.scheduled(model, self._wall())

    def _answer(self) -> None:
        a, model = self._pending, self._model
        if a is None or model is None:
            return
        try:
            out = self.job.run(a, model, now=self._wall())
        except Skip as skip:
            if skip.final:
                self._pending = None
                self._remember(a.round_id, "refused")
            self.reporter.refuse(a.round_id, skip.reason, key=f"{model.version}:{skip.code}")
            return
        except RoundInterrupted:  # stopping: a retained announcement comes back after a restart
            log.info("round %s: training ended by the agent's stop", a.round_id)
            return
        except Exception as err:
            self._pending = None
            log.exception("round %s failed", a.round_id)
            self._remember(a.round_id, "failed")
            self.reporter.report("failed", a.round_id, f"training failed: {err!r}")
            return
        self._pending = None
        self._sink.add_message(report.DELTA_TOPIC, out.payload, kind=report.DELTA_KIND)
        try:  # only once the delta is in the outbox (edge_agent.learn.residual)
            self.job.keep_residual(model, out.residual)
        except OSError as err:
            log.error("cannot store the residual of round %s (%s): the next round starts "
                      "from zero", a.round_id, err)
        self._remember(a.round_id, "sent")
        loc = out.local
        self.metrics.cpu_s.set(loc.cpu_s)
        self.reporter.report(
            "sent", a.round_id, None, samples=loc.samples, epochs=loc.epochs_run,
            loss_first=loc.loss_first, loss_last=loc.loss_last, cpu_s=loc.cpu_s,
            stopped_by_budget=loc.stopped_by_budget, train_rss_mib=loc.peak_rss_mib,
            delta_bytes=len(out.payload), k=out.k,
        )

    def _remember(self, round_id: str, outcome: str) -> None:
        try:
            self.rounds.add(round_id, outcome)
        except OSError as err:  # remembered in memory; after a restart the desk refuses a copy
            log.error("cannot store the answered round %s: %s", round_id, err)
