"""The daemon: sources → sampler → data quality → pipeline → episodes → outbox → MQTT.

``python -m edge_agent run`` builds an :class:`Agent` from a config and runs its main loop in
the main thread. Sources poll in threads of their own; once per model sample period the loop
takes a row from the sampler, checks it, pushes it through the same
:class:`~edge_agent.pipeline.StreamingPipeline` that ``replay`` uses, and commits the events
it yields to the outbox before anything is published. Under systemd it signals READY once the
model is loaded and every source has started, pings the watchdog from the loop, drains the
outbox on SIGTERM and, on SIGHUP, re-reads its config and re-verifies its bundle: a changed
bundle (a new ``bundles/current`` target) is swapped in with :meth:`Agent.swap_model` even when
the config is unchanged. The model itself lives in :mod:`edge_agent.model_slot`.

With ``[ota] enabled`` the model comes from the over-the-air updater (:mod:`edge_agent.ota`):
the A/B slot its pointer names, else ``[model] bundle``, else none yet. Without a model the
agent still polls its sources and reports sensor faults once per :data:`WAITING_PERIOD_S`,
until the updater hands it a first one; every model the updater hands over is swapped in
with :meth:`Agent.swap_model`, and the loop feeds the updater the rows it scores.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edge_agent.clock import SYSTEM_CLOCK, Clock, Ticker
from edge_agent.config.load import load_config
from edge_agent.config.model import AgentConfig
from edge_agent.data.quality import QualityMonitor
from edge_agent.deliver.mqtt import STOP_GRACE_S as UPLINK_STOP_GRACE_S
from edge_agent.deliver.mqtt import MqttUplink
from edge_agent.deliver.outbox import Outbox
from edge_agent.detect.cascade import STAGE_AUTOENCODER, STAGE_SKIPPED
from edge_agent.errors import ConfigError, EdgeAnomalyError
from edge_agent.events import SEVERITY_CRITICAL, Event
from edge_agent.health import AgentHealth, AgentSnapshot, LoopCounts, new_counts
from edge_agent.logs import Throttle, setup_logging
from edge_agent.metrics import AgentMetrics
from edge_agent.model_slot import ModelSlot, check_channels, slot_for_config
from edge_agent.ota import boot as ota_boot
from edge_agent.ota.pointer import OtaPaths
from edge_agent.ota.report import OtaMetrics, Reporter
from edge_agent.ota.updater import Updater
from edge_agent.recent_rows import RecentRows
from edge_agent.sampler import Sampler
from edge_agent.service import notify
from edge_agent.service.pages import release_file_pages
from edge_agent.service.supervisor import TaskHealth, stalled
from edge_agent.sources.base import Source
from edge_agent.sources.config import ReplaySource
from edge_agent.sources.registry import build_source

if TYPE_CHECKING:  # imported only with [learn] enabled (about 3 MB resident): see __init__
    from edge_agent.learn.learner import Learner

log = logging.getLogger("edge_agent.agent")

EVENTS_DB = "events.db"
# SIGTERM: everything (sources, drain, `offline`) must fit in the unit's TimeoutStopSec=30.
STOP_BUDGET_S = 25.0
SOURCE_STOP_S = 3.0  # of which the source threads get at most this (they stop in parallel)
FIRST_READING_WAIT_S = 10.0  # start-up waits this long for the first reading before READY
REPLAY_CHUNK_ROWS = 4096  # rows pushed per call when a replay source feeds recorded data
WATCHDOG_FALLBACK_S = 10.0
WARM_UP_ALLOWANCE_S = 600.0  # start-up time asked of systemd for a cold-cache JIT compile
# A supervised thread crash-looping this long means the agent cannot do its job: the watchdog
# pings stop and systemd restarts the whole process.
THREAD_DOWN_LIMIT_S = 300.0
LOG_EVERY_S = 300.0  # repeated loop errors and skipped windows: one log line per 5 min
RELOAD_REASON = "SIGHUP"
STOP_REASON = "agent stopping"
# Without a model (first boot with [ota]), data quality still runs once per this many seconds.
WAITING_PERIOD_S = 1.0
WAITING_HISTORY_ROWS = 256  # clean rows kept meanwhile, to prime the first model
NO_MODEL = "none"  # model_version in health and metrics while waiting for a first model


class Agent:
    def __init__(
        self, config_path: Path | None, cfg: AgentConfig, overrides: Sequence[str] = (), *,
        clock: Clock = SYSTEM_CLOCK, thread_down_limit_s: float = THREAD_DOWN_LIMIT_S,
    ) -> None:
        self.config_path = config_path
        self.overrides = list(overrides)
        self.cfg = cfg
        self.clock = clock
        self.thread_down_limit_s = thread_down_limit_s
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self._wake = threading.Event()  # set by signals: the loop looks at the flags at once
        self.started_at = time.time()
        self.first_poll_s: float | None = None
        self.counts = new_counts()
        self._throttle = Throttle(log, LOG_EVERY_S)
        startup = self._ota_startup(cfg)
        self.model: ModelSlot | None = slot_for_config(cfg) if startup is None else startup.slot
        if self.model is not None:
            check_channels(cfg, self.model)
        elif self.replaying:
            raise ConfigError("a replay source needs a model: set [model] bundle")
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"state_dir {cfg.state_dir}: cannot create it: {err}") from err
        self.outbox = Outbox(cfg.state_dir / EVENTS_DB, cfg.outbox, deliver=cfg.mqtt is not None)
        self.sampler = Sampler(self.channels, clock=clock.mono)
        self.quality = self._quality(cfg)
        self.sources: list[Source] = self._sources(cfg)
        rows = WAITING_HISTORY_ROWS if self.model is None else self.model.history_rows
        self.recent = RecentRows(rows, self.channels)
        self.uplink: MqttUplink | None = None
        self.metrics = AgentMetrics(self.snapshot)
        self.metrics_port: int | None = None
        self.ota: Updater | None = None
        if startup is not None:
            reporter = Reporter(cfg.machine_id, cfg.ota.groups, self.outbox, self._wake_uplink,
                                OtaMetrics(self.metrics.registry))
            self.ota = Updater(cfg, startup, reporter)
        self.learner: Learner | None = None
        if cfg.learn.enabled:  # fleet learning, imported only here: off by default
            from edge_agent.learn.learner import Learner
            from edge_agent.learn.report import LearnMetrics

            self.learner = Learner(cfg, self.outbox, self._wake_uplink,
                                   LearnMetrics(self.metrics.registry))
            self.learner.use_model(self.model)
            if self.ota is not None:
                self.ota.ledger.personaliser = self.learner.personaliser

    # --- assembly ---------------------------------------------------------------------------
    @staticmethod
    def _ota_startup(cfg: AgentConfig) -> ota_boot.Startup | None:
        """With [ota]: count the boot, roll back if due, load the model to start on."""
        if not cfg.ota.enabled:
            return None
        try:
            return ota_boot.start(cfg, OtaPaths.under(cfg.state_dir))
        except OSError as err:
            raise ConfigError(f"state_dir {cfg.state_dir}: cannot keep OTA state: {err}") from err

    @property
    def channels(self) -> list[str]:
        """The model's channels; without a model, every channel the sources deliver."""
        return self.cfg.delivered_channels() if self.model is None else self.model.channels

    @property
    def period_s(self) -> float:
        return WAITING_PERIOD_S if self.model is None else self.model.manifest.sampling.period_s

    def _sources(self, cfg: AgentConfig) -> list[Source]:
        every = cfg.log.repeat_every_s
        return [build_source(s, self.channels, repeat_every_s=every) for s in cfg.sources]

    def _quality(self, cfg: AgentConfig) -> QualityMonitor:
        return QualityMonitor(
            self.channels, cfg.channels, cfg.quality, cfg.machine_id,
            training=None if self.model is None else self.model.training_stats,
        )

    @property
    def replaying(self) -> bool:
        return any(isinstance(s, ReplaySource) for s in self.cfg.sources)

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        t0 = time.monotonic()
        # On an empty Numba cache the first compile takes ~20 s here and minutes on a Pi:
        # ask systemd for the time rather than be killed mid-compile.
        notify.extend_timeout(WARM_UP_ALLOWANCE_S)
        notify.status("compiling or loading the pipeline kernels")
        if self.model is not None:
            self.model.warm_up()
            log.info(
                "model %s loaded and warmed up in %.1f s (%d channels, period %.3g s)",
                self.model.manifest.model_version,
                time.monotonic() - t0,
                len(self.model.channels),
                self.model.manifest.sampling.period_s,
            )
        else:
            log.warning("no model yet: polling %s and waiting for an over-the-air deployment",
                        ", ".join(self.channels))
        if self.cfg.metrics.enabled:
            self.metrics_port = self.metrics.serve(self.cfg.metrics)
        self._start_uplink()
        if self.ota is not None and self.uplink is not None:
            self.ota.start(self.uplink)
        if self.learner is not None and self.uplink is not None:
            self.learner.start(self.uplink)
        for s in self.sources:
            s.start(self.sampler)
        self._wait_first_reading()
        waiting = "; waiting for model" if self.model is None else ""
        notify.ready(f"watching {self.cfg.machine_id}: {len(self.sources)} source(s){waiting}")
        log.info("ready: %s, %d source(s)%s", self.cfg.machine_id, len(self.sources), waiting)
        release_file_pages()  # start-up's clean library pages (edge_agent.service.pages)

    def _start_uplink(self) -> None:
        if self.cfg.mqtt is None:
            log.info("no [mqtt] configured: events stay in %s and the log", self.outbox_path)
            return
        self.uplink = MqttUplink(self.cfg.mqtt, self.cfg.machine_id, self.outbox, self.health)
        self.uplink.start()

    @property
    def outbox_path(self) -> Path:
        return self.cfg.state_dir / EVENTS_DB

    def _wait_first_reading(self) -> None:
        t0 = time.monotonic()
        deadline = t0 + FIRST_READING_WAIT_S
        while time.monotonic() < deadline and not self.stop_requested.is_set():
            if any(s.counters.samples for s in self.sources) or not self.sampler.rows.empty():
                self.first_poll_s = time.time() - self.started_at
                log.info("first reading %.2f s after start", self.first_poll_s)
                return
            time.sleep(0.01)
        log.warning("no reading within %.0f s of start; carrying on", FIRST_READING_WAIT_S)

    def stop(self) -> None:
        """Stop within :data:`STOP_BUDGET_S`: sources in parallel, then drain the outbox and
        say `offline` with what is left of the budget (the rest waits in the outbox)."""
        notify.stopping()
        deadline = time.monotonic() + STOP_BUDGET_S
        if self.ota is not None:
            self.ota.stop()
        if self.learner is not None:
            self.learner.stop()
            self.learner.flush()
        self._stop_sources(SOURCE_STOP_S)
        self._close_episodes(STOP_REASON)
        if self.uplink is not None:
            drain = deadline - time.monotonic() - UPLINK_STOP_GRACE_S
            self.uplink.stop(drain_timeout_s=max(0.0, drain))
        self.metrics.close()
        self.outbox.close()
        log.info("stopped: %s", self._summary())

    def _stop_sources(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for s in self.sources:
            s.request_stop()
        for s in self.sources:
            s.stop(timeout_s=max(0.0, deadline - time.monotonic()))

    def request_stop(self) -> None:
        """Leave the main loop at its next turn (SIGTERM, SIGINT; thread-safe)."""
        self.stop_requested.set()
        self._wake.set()

    def request_reload(self) -> None:
        """Reload the config at the loop's next turn, unless a stop is asked for too."""
        self.reload_requested.set()
        self._wake.set()

    def install_signal_handlers(self) -> None:
        def on_term(_signum: int, _frame: FrameType | None) -> None:
            self.request_stop()

        def on_hup(_signum: int, _frame: FrameType | None) -> None:
            self.request_reload()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)

    # --- main loop ----------------------------------------------------------------------------
    def run(self, *, max_rows: int | None = None) -> None:
        """Run until SIGTERM/SIGINT (or ``max_rows`` rows, or the end of a non-looping replay).

        A stop always wins over a reload that arrives with it."""
        interval = notify.watchdog_interval_s() or WATCHDOG_FALLBACK_S
        next_ping = 0.0
        ticker = Ticker(self.period_s, self.clock)
        while True:
            if self.ota is not None:
                self._take_update()
            if ticker.period_s != self.period_s:
                ticker = Ticker(self.period_s, self.clock)  # new model
            mono = time.monotonic()
            if mono >= next_ping:  # also while waiting: a slow model period must not starve it
                self._watchdog()
                next_ping = mono + interval
            self._wake.clear()
            if self.stop_requested.is_set():
                return
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
                continue
            self.outbox.maintain()
            if self.replaying:
                ts, rows = self.sampler.take_rows(REPLAY_CHUNK_ROWS, wait_s=0.2)
                if ts.size:
                    self._guarded(self._push_rows, ts, rows)
                elif all(getattr(s, "finished", False) for s in self.sources):
                    return
            else:
                step = ticker.check_step()
                if step is not None:
                    self._clock_stepped(step)
                wait = ticker.due_in()
                if wait > 0:
                    self._wake.wait(min(wait, interval))
                    continue
                self._guarded(self._tick, ticker.take())
            if max_rows is not None and self.counts["rows"] >= max_rows:
                return

    def _watchdog(self) -> None:
        """Ping systemd's watchdog unless a thread the agent needs has been down too long."""
        down = stalled(self.tasks(), self.thread_down_limit_s)
        if not down:
            notify.watchdog_ping()
            return
        self._throttle.log(
            logging.CRITICAL, "stalled",
            "thread(s) %s crash-looping for over %.0f s: watchdog pings stopped so that "
            "systemd restarts the agent", ", ".join(down), self.thread_down_limit_s,
        )

    def tasks(self) -> list[TaskHealth]:
        """Every supervised thread: one per source, plus the uplink and the OTA updater."""
        out = [s.health for s in self.sources]
        if self.uplink is not None:
            out.append(self.uplink.health)
        if self.ota is not None:
            out.append(self.ota.health)
        return out

    def _clock_stepped(self, step: float) -> None:
        self.counts["clock_steps"] += 1
        log.warning(
            "wall clock stepped %s by %.3f s (NTP or a manual change): rows are stamped on the "
            "new time from now on; windows restart after the step (%d step(s) so far)",
            "forward" if step > 0 else "back", abs(step), self.counts["clock_steps"],
        )
        if self.model is not None:
            self.model.pipeline.break_segment()
        self.recent.clear()  # stamps from before the step would not line up with new ones
        self.quality.shift_time(step)

    def _guarded(self, push: Callable[..., None], *args: Any) -> None:
        """Score one tick or chunk; an unexpected error costs those rows, never the agent."""
        try:
            push(*args)
        except Exception as err:
            self.counts["loop_errors"] += 1
            self._throttle.log(
                logging.ERROR, "loop",
                "scoring failed, rows skipped and the window buffer restarted (%d error(s) so "
                "far): %r", self.counts["loop_errors"], err, exc_info=True,
            )
            if self.ota is not None:
                self.ota.scoring_failed()  # counts against a model on probation
            # The pipeline may hold half-updated state: start a fresh segment on the next row.
            if self.model is not None:
                self.model.pipeline.break_segment()

    def _tick(self, t: float) -> None:
        values, age, fresh = self.sampler.take(self.clock.mono())
        clean, faults = self.quality.check(t, values, age, fresh)
        self._push(np.array([t]), clean[None, :], faults)

    def _push_rows(self, ts: npt.NDArray[np.float64], rows: npt.NDArray[np.float64]) -> None:
        faults: list[Event] = []
        clean = np.empty_like(rows)
        zero = np.zeros(rows.shape[1])
        fresh = np.ones(rows.shape[1], np.bool_)
        for i in range(ts.shape[0]):
            clean[i], ev = self.quality.check(float(ts[i]), rows[i], zero, fresh)
            faults.extend(ev)
        self._push(ts, clean, faults)

    def _push(
        self, ts: npt.NDArray[np.float64], rows: npt.NDArray[np.float64], faults: list[Event]
    ) -> None:
        if self.model is None:  # waiting for a first model: data quality only
            self.recent.append(ts, rows)
            for e in faults:
                self._emit(e)
            return
        t0 = time.perf_counter()
        batch = self.model.pipeline.push(ts, rows)
        self.recent.append(ts, rows)
        if self.ota is not None:
            self.ota.record(ts, rows, batch)
        n = len(batch.stage)
        if n:
            self.metrics.latency.observe(time.perf_counter() - t0)
            self.metrics.record_window(batch, self.model.cascade.threshold.alert_threshold)
        events = self.model.episodes.update(batch, self.clock.wall())
        if self.learner is not None:
            self.learner.record(ts, rows, batch, fault=bool(faults or self.quality.faulty()),
                                open_episode=self.model.episodes.open_episode is not None)
        self.counts["rows"] += ts.shape[0]
        self.counts["windows"] += n
        s2 = int(np.count_nonzero(batch.stage == STAGE_AUTOENCODER))
        self.counts["stage2"] += s2
        self.metrics.rows.inc(ts.shape[0])
        self.metrics.windows.inc(n)
        self.metrics.stage2.inc(s2)
        skipped = int(np.count_nonzero(batch.stage == STAGE_SKIPPED))
        if skipped:
            self.counts["windows_skipped"] += skipped
            self._throttle.warning(
                "skipped", "%d window(s) not scorable (non-finite values reached them); "
                "skipped, %d so far", skipped, self.counts["windows_skipped"],
            )
        for e in [*faults, *events]:
            self._emit(e)

    @property
    def version(self) -> str:
        return NO_MODEL if self.model is None else self.model.version

    def _wake_uplink(self) -> None:
        if self.uplink is not None:
            self.uplink.wake()

    def _emit(self, event: Event) -> None:
        self.outbox.add(event)  # committed before anything is published
        self.counts["events"] += 1
        self.metrics.events.labels(event.kind, event.state).inc()
        level = logging.WARNING if event.severity >= SEVERITY_CRITICAL else logging.INFO
        log.log(level, "%s", event.summary())
        log.debug("event payload %s", event.to_json().decode())
        if self.uplink is not None:
            self.uplink.wake()

    # --- reload and model swap ---------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: re-read the config and re-verify the bundle; swap the model if the bundle
        changed (even when the config did not). Anything invalid keeps the running ones."""
        if self.config_path is None:
            return
        notify.reloading()
        try:
            new = load_config(self.config_path, self.overrides)
            # Over the air, the updater owns the model: a reload keeps it.
            model = self.model if self.ota is not None else slot_for_config(new, self.model)
            if model is not None:
                check_channels(new, model)
                model.warm_up()
        except Exception as exc:  # a faulty new model must not take the running one down
            unexpected = not isinstance(exc, EdgeAnomalyError)
            log.error("reload refused, keeping the running config and model %s: %s",
                      self.version, exc, exc_info=unexpected)
            notify.ready("reload refused; running the previous config")
            return
        old, self.cfg = self.cfg, new
        config_changed = new != old
        if new.ota != old.ota or new.learn != old.learn:
            log.warning("[ota] or [learn] changed: the change takes effect at the next start")
        if model is not None and model is not self.model:
            self._swap(model, RELOAD_REASON, restart_inputs=config_changed)
        elif config_changed:
            self._restart_inputs()
        if new.mqtt != old.mqtt or new.machine_id != old.machine_id:
            if self.uplink is not None:
                self.uplink.stop(drain_timeout_s=1.0)
                self.uplink = None
            self._start_uplink()
            if self.ota is not None and self.uplink is not None:
                self.ota.attach(self.uplink)
            if self.learner is not None and self.uplink is not None:
                self.learner.attach(self.uplink)
        notify.ready(f"reloaded: watching {new.machine_id}")
        if config_changed:
            log.info("config reloaded from %s", self.config_path)
        else:
            log.info("config unchanged (%s); model %s", self.config_path, self.version)

    def swap_model(self, new: ModelSlot, reason: str) -> None:
        """Put ``new`` in place of the running model, from the main loop's thread.

        The old model's open episodes are closed first (its ``close`` events go to the
        outbox before the new model scores a row), the new pipeline is primed with the last
        clean rows so that no row goes unscored, and the sources keep running unless the
        model's channels differ (the caller has checked, with
        :func:`~edge_agent.model_slot.check_channels`, that the sources deliver them). A new
        model that cannot warm up raises and leaves the old one running.
        """
        self._swap(new, reason, restart_inputs=False)

    def _swap(self, new: ModelSlot, reason: str, *, restart_inputs: bool) -> None:
        new.warm_up()
        before, channels = self.version, self.channels
        self._close_episodes(f"model {before} replaced by {new.version} ({reason})")
        self.model = new
        if self.learner is not None:
            self.learner.use_model(new)  # its local threshold, before a row is scored
        if restart_inputs or new.channels != channels:
            self._restart_inputs()
        else:
            self.quality.set_training(new.training_stats)
        new.prime_from(self.recent)
        self.recent = self.recent.resized(new.history_rows, new.channels)
        log.info("model %s → %s (%s)", before, new.version, reason)

    def _take_update(self) -> None:
        """Swap in the model the OTA updater hands over, if it has one ready."""
        assert self.ota is not None
        h = self.ota.take_ready()
        if h is None:
            return
        try:
            self.swap_model(h.slot, h.reason)
        except Exception as err:  # the running model goes on; the updater undoes its switch
            self.ota.swap_failed(h, err)
            return
        self.ota.swapped(h)

    def _restart_inputs(self) -> None:
        """New sampler, data quality and sources for the running model and config."""
        self._stop_sources(SOURCE_STOP_S)
        self.sampler = Sampler(self.channels, clock=self.clock.mono)
        self.quality = self._quality(self.cfg)
        self.sources = self._sources(self.cfg)
        for s in self.sources:
            s.start(self.sampler)

    def _close_episodes(self, reason: str) -> None:
        """``close`` events for the running model's open episodes (swap, stop)."""
        if self.model is None:
            return
        try:
            for e in self.model.close_episodes(self.clock.wall(), reason):
                self._emit(e)
        except Exception as err:  # stopping or swapping must go on
            log.error("could not close the open episodes (%s): %r", reason, err)

    # --- health -------------------------------------------------------------------------------
    def health(self) -> AgentHealth:
        return AgentHealth(
            uptime_s=round(time.time() - self.started_at, 1),
            first_reading_s=self.first_poll_s,
            model_version=self.version,
            counts=LoopCounts(**self.counts),
            outbox_depth=self.outbox.depth(),
            outbox_dropped=self.outbox.dropped(),
            outbox=self.outbox.health(),
            faulty_channels=self.quality.faulty(),
            sources={s.name: s.counters.snapshot() for s in self.sources},
            threads={t.name: t.status() for t in self.tasks()},
        )

    def snapshot(self) -> AgentSnapshot:
        uplink = self.uplink
        return AgentSnapshot(
            **self.health(),
            channels=self.channels,
            mqtt_connected=uplink is not None and uplink.connected,
            mqtt=None if uplink is None else uplink.stats(),
        )

    def _summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.counts.items())


def run_agent(
    config_path: Path,
    overrides: Sequence[str] = (),
    *,
    max_rows: int | None = None,
    verbose: bool = False,
) -> int:
    """``edge_agent run``: load, start, loop, drain. Returns the exit code."""
    cfg = load_config(config_path, overrides)
    setup_logging("debug" if verbose else cfg.log.level)
    agent = Agent(config_path, cfg, overrides)
    agent.install_signal_handlers()
    try:
        agent.start()
        agent.run(max_rows=max_rows)
    finally:
        agent.stop()
    return 0
