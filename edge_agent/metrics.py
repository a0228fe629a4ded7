"""The Prometheus endpoint: what the agent is doing, scraped over HTTP.

Sits beside the pipeline, reading from it. Pipeline counters and the latency histogram are
updated in the main loop; per-source counters, outbox depth and broker state are read from
their owners at scrape time (a custom collector), so no component needs to know about
Prometheus. Rates (samples per second per source) are ``rate()`` of the ``_total`` counters.

The endpoint itself is :class:`edge_agent.metrics_server.MetricsServer` (loopback by default,
bounded connections, optional TLS and basic auth). Metrics are optional: a port that cannot be
bound is a warning and the agent carries on without them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_agent.config.model import MetricsConfig
from edge_agent.detect.cascade import STAGE_AUTOENCODER
from edge_agent.health import NO_WINDOW, AgentSnapshot, LatestWindow
from edge_agent.metrics_server import MetricsServer

if TYPE_CHECKING:
    from edge_agent.pipeline import WindowBatch

log = logging.getLogger("edge_agent.metrics")

# Window scoring takes tens of microseconds to a few milliseconds on a Pi; buckets in seconds.
LATENCY_BUCKETS_S = (5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 0.25, 1.0)

Snapshot = Callable[[], AgentSnapshot]
Latest = Callable[[], LatestWindow]

PER_SOURCE = {
    "samples": "Channel values delivered by the source",
    "polls": "Requests or lines attempted",
    "poll_errors": "Failed requests (after retries) or unusable reads",
    "reconnects": "Links re-opened",
    "malformed": "Frames or lines that did not parse",
}
LOOP_COUNTERS = {
    "windows_skipped": "Windows not scorable (non-finite values reached them), skipped",
    "loop_errors": "Ticks whose scoring failed unexpectedly (their rows were skipped)",
    "clock_steps": "Wall-clock steps detected (NTP or manual); windows restart after each",
}
OUTBOX_COUNTERS = {
    "store_errors": "Outbox reads, writes and opens the disk refused",
    "memory_dropped": "Undelivered events dropped because the disk refused them and memory "
    "was full (each logged with its content)",
    "quarantined": "Corrupt outbox files moved aside at run time",
}
MQTT_COUNTERS = {
    "publish_refused": "Publishes the broker refused (PUBACK failure reason); events kept",
    "ack_timeouts": "Connections dropped because a PUBACK did not come in time",
    "session_takeovers": "Times another client took over this gateway's client id",
    "connection_losses": "Broker connections lost",
}


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc)
    c.add_metric([], value)
    return c


class _Live(Collector):
    """Reads the agent's live state at scrape time."""

    def __init__(self, snapshot: Snapshot, latest: Latest) -> None:
        self.snapshot = snapshot
        self.latest = latest

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        for key, doc in PER_SOURCE.items():
            fam = CounterMetricFamily(f"edge_agent_source_{key}", doc, labels=["source"])
            for name, counters in s["sources"].items():
                fam.add_metric([name], float(counters.get(key, 0)))
            yield fam
        for key, doc in LOOP_COUNTERS.items():
            yield _counter(f"edge_agent_{key}", doc, float(s["counts"][key]))  # type: ignore[literal-required]
        yield from self._threads(s)
        yield from self._delivery(s)
        g = GaugeMetricFamily(
            "edge_agent_channel_faulty", "1 while a channel has an open sensor fault",
            labels=["channel"],
        )
        faulty = set(s["faulty_channels"])
        for ch in s["channels"]:
            g.add_metric([ch], 1.0 if ch in faulty else 0.0)
        yield g
        g = GaugeMetricFamily("edge_agent_model_info", "The running model", labels=["version"])
        g.add_metric([s["model_version"]], 1.0)
        yield g
        yield from self._window(s["channels"], self.latest())

    @staticmethod
    def _window(channels: list[str], w: LatestWindow) -> Iterator[Metric]:
        yield _gauge("edge_agent_score_ratio", "Latest window's stage-2 reconstruction error / "
                     "alert threshold (0 when the forest screen passed it)", w.score_ratio)
        yield _gauge("edge_agent_alert", "Alert hysteresis state after the latest window (0/1)",
                     1.0 if w.alert else 0.0)
        g = GaugeMetricFamily(
            "edge_agent_channel_error_share",
            "Each channel's share of the latest stage-2 window's reconstruction error",
            labels=["channel"],
        )
        # After a reload to a model with other channels, the old shares no longer apply.
        shares = w.shares if len(w.shares) == len(channels) else (0.0,) * len(channels)
        for ch, share in zip(channels, shares, strict=True):
            g.add_metric([ch], share)
        yield g

    @staticmethod
    def _threads(s: AgentSnapshot) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "edge_agent_thread_up", "1 while a supervised thread runs and is not crash-looping",
            labels=["thread"],
        )
        crashes = CounterMetricFamily(
            "edge_agent_thread_crashes", "Unexpected exceptions that restarted a thread",
            labels=["thread"],
        )
        down = GaugeMetricFamily(
            "edge_agent_thread_down_seconds", "Seconds a thread has been crash-looping",
            labels=["thread"],
        )
        for name, st in s["threads"].items():
            up.add_metric([name], 1.0 if st["running"] and st["down_s"] == 0 else 0.0)
            crashes.add_metric([name], float(st["crashes"]))
            down.add_metric([name], float(st["down_s"]))
        yield from (up, crashes, down)

    @staticmethod
    def _delivery(s: AgentSnapshot) -> Iterator[Metric]:
        yield _gauge("edge_agent_outbox_depth", "Events waiting for a broker PUBACK",
                     float(s["outbox_depth"]))
        yield _counter("edge_agent_outbox_dropped", "Undelivered events dropped by the size cap",
                       float(s["outbox_dropped"]))
        box = s["outbox"]
        yield _gauge("edge_agent_outbox_degraded",
                     "1 while the outbox holds events in memory because the disk refuses them",
                     1.0 if box["degraded"] else 0.0)
        yield _gauge("edge_agent_outbox_held", "Events held in memory, not yet on disk",
                     float(box["held"]))
        for key, doc in OUTBOX_COUNTERS.items():
            yield _counter(f"edge_agent_outbox_{key}", doc, float(box[key]))  # type: ignore[literal-required]
        yield _gauge("edge_agent_mqtt_connected", "1 while connected to the broker",
                     1.0 if s["mqtt_connected"] else 0.0)
        mqtt = s["mqtt"]
        for key, doc in MQTT_COUNTERS.items():
            value = 0.0 if mqtt is None else float(mqtt[key])  # type: ignore[literal-required]
            yield _counter(f"edge_agent_mqtt_{key}", doc, value)


class AgentMetrics:
    """Counters the main loop updates, plus the scrape-time collector and the HTTP server."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rows = Counter("edge_agent_rows", "Rows pushed into the pipeline", registry=r)
        self.windows = Counter(
            "edge_agent_windows_screened", "Windows scored by the forest screen", registry=r
        )
        self.stage2 = Counter(
            "edge_agent_stage2_windows", "Windows passed on to the int8 autoencoder", registry=r
        )
        self.events = Counter(
            "edge_agent_events", "Events emitted", ["kind", "state"], registry=r
        )
        self.latency = Histogram(
            "edge_agent_inference_seconds",
            "Pipeline time per pushed block that completed at least one window",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.refused = Counter(
            "edge_agent_metrics_refused",
            "Connections to /metrics refused or dropped, by reason (busy, timeout, too_large, "
            "tls, unauthorized)",
            ["reason"],
            registry=r,
        )
        self.latest = NO_WINDOW
        r.register(_Live(snapshot, lambda: self.latest))
        self._server: MetricsServer | None = None

    def record_window(self, batch: WindowBatch, alert_threshold: float) -> None:
        """Keep the newest window's score ratio, alert state and (from the newest stage-2
        window) per-channel error shares for the gauges. Called by the main loop on every
        push; cheap for the daemon's one window per push."""
        last = batch.size - 1
        if last < 0:
            return
        stage2 = batch.stage == STAGE_AUTOENCODER
        ratio = float(batch.error[last]) / alert_threshold if stage2[last] else 0.0
        shares = self.latest.shares
        if stage2[last]:
            shares = tuple(batch.contributions[last].tolist())
        elif last:
            found = np.flatnonzero(stage2)
            if found.size:
                shares = tuple(batch.contributions[found[-1]].tolist())
        self.latest = LatestWindow(ratio, bool(batch.alert[last]), shares)

    def serve(self, cfg: MetricsConfig) -> int | None:
        """Start the endpoint; returns the bound port, or None (logged as a warning) when the
        address cannot be bound: metrics are optional. Raises ConfigError for a key or
        password file that is unsafe or unreadable. Serving again replaces the endpoint."""
        self.close()
        try:
            server = MetricsServer(cfg, self.registry, self._count_refused)
        except OSError as err:
            log.warning(
                "metrics: cannot listen on %s:%d (%s); carrying on without /metrics",
                cfg.host, cfg.port, err.strerror or err,
            )
            return None
        server.start()
        self._server = server
        return server.port

    def _count_refused(self, reason: str) -> None:
        self.refused.labels(reason).inc()

    def close(self) -> None:
        """Stop the endpoint and join its threads."""
        if self._server is not None:
            self._server.close()
            self._server = None
