"""The live view's window on the agent: one scrape of its Prometheus ``/metrics``.

``edge_agent watch`` runs beside the daemon (normally on the same gateway) and reads the
endpoint the config's ``[metrics]`` describes, with the standard library's HTTP client and
``prometheus_client``'s text parser: counters (rows, windows, stage-2 windows), the latest
window's gauges (score ratio, alert state, per-channel error shares), sensor faults, outbox
depth and the agent's broker connection. A scrape that fails raises :class:`ScrapeError`
naming the URL and why; the view shows it and tries again at its next refresh.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from edge_agent.config.model import MetricsConfig
from edge_agent.config.secrets import read_secret_file
from edge_agent.errors import ConfigError

SCRAPE_TIMEOUT_S = 2.0  # a scrape is a few kB from this machine; longer means trouble
ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # a wildcard bind is reached on loopback


class ScrapeError(Exception):
    """The endpoint could not be read; the message names the URL and the cause."""


@dataclass(frozen=True)
class AgentReading:
    """What the view takes from one scrape."""

    at: float  # monotonic s when it was read
    rows: float  # rows pushed into the pipeline since the agent started
    windows: float  # windows screened
    stage2: float  # windows scored by the autoencoder
    score_ratio: float  # latest window's stage-2 error / alert threshold (0: screened)
    alert: bool  # hysteresis state after the latest window
    shares: dict[str, float]  # channel -> share of the latest stage-2 window's error
    faulty: list[str]  # channels with an open sensor fault
    outbox_depth: float  # events waiting for a broker PUBACK
    mqtt_connected: bool  # the agent's own broker connection
    model_version: str | None = None
    missing: list[str] = field(default_factory=list)  # metrics this agent does not export

    @property
    def stage2_share(self) -> float:
        return self.stage2 / self.windows if self.windows else 0.0


_Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse_metrics(text: str, at: float) -> AgentReading:
    """An :class:`AgentReading` from the exposition text; raises ScrapeError for text that
    does not parse. A metric an older agent does not export reads as 0 and is listed in
    ``missing``."""
    samples: _Samples = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    except ValueError as err:
        raise ScrapeError(f"not Prometheus text: {err}") from err
    missing: list[str] = []

    def one(name: str) -> float:
        got = samples.get(name)
        if not got:
            missing.append(name)
            return 0.0
        return got[0][1]

    def per_channel(name: str) -> dict[str, float]:
        if name not in samples:
            missing.append(name)
        return {labels.get("channel", ""): v for labels, v in samples.get(name, [])}

    models = [labels.get("version", "") for labels, v in samples.get("edge_agent_model_info", [])
              if v]
    return AgentReading(
        at=at,
        rows=one("edge_agent_rows_total"),
        windows=one("edge_agent_windows_screened_total"),
        stage2=one("edge_agent_stage2_windows_total"),
        score_ratio=one("edge_agent_score_ratio"),
        alert=one("edge_agent_alert") > 0,
        shares=per_channel("edge_agent_channel_error_share"),
        faulty=[ch for ch, v in per_channel("edge_agent_channel_faulty").items() if v > 0],
        outbox_depth=one("edge_agent_outbox_depth"),
        mqtt_connected=one("edge_agent_mqtt_connected") > 0,
        model_version=models[0] if models else None,
        missing=missing,
    )


def _url_host(host: str) -> str:
    host = ANY_ADDRESS.get(host, host)
    try:
        is_v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        is_v6 = False
    return f"[{host}]" if is_v6 else host


def _tls_context(cfg: MetricsConfig) -> ssl.SSLContext | None:
    """Trust exactly the certificate the agent serves (its config's ``certfile``): the view
    runs beside the agent and connects by address, so the certificate itself is the pin and
    the host name is not checked."""
    if cfg.tls is None:
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(cfg.tls.certfile))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(
            f"metrics.tls.certfile {cfg.tls.certfile}: cannot load it to trust the agent's "
            f"endpoint: {err}"
        ) from err
    ctx.check_hostname = False
    # The served leaf (or an intermediate) is a trust anchor of its own, without its root.
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


class MetricsReader:
    """Scrapes one agent's endpoint as its config describes it (HTTP or HTTPS, basic auth).

    Raises ConfigError at construction for a password file that is unsafe or unreadable."""

    def __init__(self, cfg: MetricsConfig) -> None:
        scheme = "https" if cfg.tls is not None else "http"
        self.url = f"{scheme}://{_url_host(cfg.host)}:{cfg.port}/metrics"
        self._context = _tls_context(cfg)
        self._headers: dict[str, str] = {}
        if cfg.username is not None and cfg.password_file is not None:
            password = read_secret_file(cfg.password_file, "metrics.password_file")
            token = base64.b64encode(f"{cfg.username}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"

    def read(self, at: float) -> AgentReading:
        """One scrape, stamped ``at`` (monotonic s); raises ScrapeError."""
        request = urllib.request.Request(self.url, headers=self._headers)
        try:
            with urllib.request.urlopen(
                request, timeout=SCRAPE_TIMEOUT_S, context=self._context
            ) as resp:
                text = resp.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as err:
            raise ScrapeError(f"{self.url}: HTTP {err.code} {err.reason}") from err
        except urllib.error.URLError as err:
            reason = getattr(err.reason, "strerror", None) or err.reason
            raise ScrapeError(f"{self.url}: {reason}") from err
        except (OSError, http.client.HTTPException) as err:
            raise ScrapeError(f"{self.url}: {err!r}") from err
        return parse_metrics(text, at)
