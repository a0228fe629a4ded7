"""The gateway's config: one model for the whole file, strict, each field with its unit.

Sits in front of everything the agent does: ``edge_agent.config.load`` layers the machine's
file over the fleet defaults, applies ``--set`` overrides and validates into
:class:`AgentConfig`. Backend sections (sources, delivery) are defined next to their code and
picked by their ``type`` field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from edge_agent.config.strict import StrictModel
from edge_agent.deliver.config import MqttConfig, OutboxConfig
from edge_agent.learn.config import LearnConfig
from edge_agent.ota.config import OtaConfig
from edge_agent.sources.config import ReplaySource, SourceConfig, source_channels

DEFAULT_STATE_DIR = Path("/var/lib/edge-agent")
DEFAULT_METRICS_PORT = 9108



class ModelConfig(StrictModel):
    """The signed model bundle the agent runs, and the keys a bundle may be signed with."""

    bundle: Path | None = Field(
        default=None, description="Bundle directory written by `export bundle` (often a "
        "`bundles/current` link); absent only when over-the-air updates provide the model"
    )
    trust_key: Path = Field(description="Ed25519 public key (PEM) the bundle must be signed with")
    extra_trust_keys: list[Path] = Field(
        default_factory=list, description="Further Ed25519 public keys (PEM) accepted, for key "
        "rotation: a bundle signed with any one of these or `trust_key` is trusted"
    )
    threads: int = Field(default=1, ge=1, le=8, description="TFLite interpreter threads")

    @property
    def trusted_keys(self) -> list[Path]:
        """Every key a bundle may be signed with, ``trust_key`` first."""
        return [self.trust_key, *self.extra_trust_keys]


class ChannelQuality(StrictModel):
    """Plausibility checks of one channel; a failing reading is treated as missing."""

    min: float | None = Field(default=None, description="Lowest plausible value, in its unit")
    max: float | None = Field(default=None, description="Highest plausible value, in its unit")
    stuck_samples: int | None = Field(
        default=None, ge=2, description="Identical readings in a row that mean a stuck sensor"
    )
    stale_s: float | None = Field(
        default=None, gt=0, description="Seconds without a fresh reading before it is stale"
    )

    @model_validator(mode="after")
    def _ordered(self) -> ChannelQuality:
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self


class QualityDefaults(StrictModel):
    """Checks applied to every channel unless its own ``[channels.<name>]`` entry says more."""

    stuck_samples: int | None = Field(
        default=None, ge=2, description="Identical readings in a row that mean a stuck sensor"
    )
    stale_s: float = Field(
        default=10.0, gt=0, description="Seconds without a fresh reading before it is stale"
    )
    clear_samples: int = Field(
        default=10, ge=1, description="Good samples in a row that close a sensor_fault event"
    )
    learned: bool = Field(
        default=True,
        description="Apply the model's learned limits: stuck_after where no stuck_samples is "
        "configured, noisy_above, jump_above and spike_above (edge_agent.data.repeats, "
        ".roughness, .jumps, .spikes)",
    )


class EventsConfig(StrictModel):
    """How alert episodes become messages."""

    update_interval_s: float = Field(
        default=60.0, gt=0, description="Least seconds between updates of an open episode"
    )
    top_channels: int = Field(
        default=3, ge=1, le=16, description="Contributing channels named in an event"
    )


class MetricsTlsConfig(StrictModel):
    """HTTPS for the metrics endpoint; with ``client_ca_file``, scrapers need a certificate."""

    certfile: Path = Field(description="Server certificate chain (PEM)")
    keyfile: Path = Field(
        description="Server private key (PEM); must not be readable by other users"
    )
    client_ca_file: Path | None = Field(
        default=None, description="CA bundle (PEM) scrapers' client certificates must chain "
        "to; absent: no client certificate asked for"
    )


class MetricsConfig(StrictModel):
    """The Prometheus endpoint (text exposition format over HTTP or HTTPS).

    On loopback by default: a scraper on the gateway itself (or an SSH tunnel) needs nothing
    more. To scrape across the network, set ``host`` and add ``[metrics.tls]`` and basic auth.
    """

    enabled: bool = Field(default=True, description="Serve /metrics")
    host: str = Field(
        default="127.0.0.1", min_length=1, description="Listen address (IP or host name); "
        "127.0.0.1 keeps it on the gateway, any other wants tls and basic auth too"
    )
    port: int = Field(
        default=DEFAULT_METRICS_PORT, ge=0, le=65535, description="Listen port (0: any free one)"
    )
    max_connections: int = Field(
        default=8, ge=1, le=256, description="Connections served at once; one more is "
        "answered 503 (or closed, over TLS) at once"
    )
    read_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="Seconds a client has to send its whole "
        "request (TLS handshake included), and again to take the response"
    )
    tls: MetricsTlsConfig | None = Field(default=None, description="HTTPS; absent: plain HTTP")
    username: str | None = Field(
        default=None, min_length=1, description="Basic-auth user name scrapers must send"
    )
    password_file: Path | None = Field(
        default=None, description="File holding the basic-auth password (mode 0600 or 0640)"
    )

    @model_validator(mode="after")
    def _auth_pair(self) -> MetricsConfig:
        if (self.username is None) != (self.password_file is None):
            raise ValueError("basic auth needs both username and password_file")
        if self.username is not None and ":" in self.username:
            raise ValueError("username may not contain ':' (basic auth separates on it)")
        return self


class LogConfig(StrictModel):
    """Logging to stderr (journald under systemd)."""

    level: Literal["debug", "info", "warning", "error"] = Field(default="info")
    repeat_every_s: float = Field(
        default=300.0, ge=0, description="A repeating warning is logged once per this many "
        "seconds, with a count, to spare the SD card"
    )


class AgentConfig(StrictModel):
    """Everything one gateway needs to watch one machine."""

    machine_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=64,
        description="Unique machine name; used in topics and event ids",
    )
    state_dir: Path = Field(
        default=DEFAULT_STATE_DIR, description="Writable directory for the outbox and state"
    )
    model: ModelConfig
    sources: list[SourceConfig] = Field(min_length=1, description="Where the samples come from")
    channels: dict[str, ChannelQuality] = Field(
        default_factory=dict, description="Per-channel plausibility checks, by channel name"
    )
    quality: QualityDefaults = Field(default_factory=QualityDefaults)
    events: EventsConfig = Field(default_factory=EventsConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    mqtt: MqttConfig | None = Field(
        default=None, description="Broker; absent: events stay in the store and the log"
    )
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    ota: OtaConfig = Field(
        default_factory=OtaConfig, description="Over-the-air model updates (off by default)"
    )
    learn: LearnConfig = Field(
        default_factory=LearnConfig, description="Fleet learning (off by default)"
    )

    @model_validator(mode="after")
    def _ota_needs_a_broker(self) -> AgentConfig:
        if self.ota.enabled and self.mqtt is None:
            raise ValueError(
                "[ota] enabled needs [mqtt]: deployments and bundles come over the broker"
            )
        if self.learn.enabled and self.mqtt is None:
            raise ValueError(
                "[learn] enabled needs [mqtt]: rounds and deltas go over the broker"
            )
        return self

    @model_validator(mode="after")
    def _sources_fit_together(self) -> AgentConfig:
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique; repeated: {dup}")
        replay = [s for s in self.sources if isinstance(s, ReplaySource)]
        if replay and len(self.sources) > 1:
            raise ValueError("a 'replay' source feeds whole rows and cannot be mixed with others")
        seen: dict[str, str] = {}
        for s in self.sources:
            for ch in source_channels(s):
                if ch in seen:
                    raise ValueError(
                        f"channel {ch!r} is fed by both {seen[ch]!r} and {s.name!r}; "
                        "each channel needs exactly one source"
                    )
                seen[ch] = s.name
        if not replay:
            unknown = sorted(set(self.channels) - set(seen))
            if unknown:
                raise ValueError(
                    f"[channels] names {unknown} that no source delivers; "
                    f"sources deliver {sorted(seen)}"
                )
        return self

    def delivered_channels(self) -> list[str]:
        """Channels the live sources deliver (empty for a replay source: the file decides)."""
        return [ch for s in self.sources for ch in source_channels(s)]
