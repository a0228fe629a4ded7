"""Config models of event delivery: the local outbox and the MQTT uplink.

Sits at the end of the pipeline. Events are committed to the outbox (SQLite) first and only
then published, so the outbox settings apply even when no broker is configured.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from edge_agent.config.strict import StrictModel


class OutboxConfig(StrictModel):
    """The event store on the gateway's disk (SQLite in WAL mode)."""

    max_mb: float = Field(
        default=32.0, gt=0, description="Size cap of undelivered events in MiB; beyond it the "
        "oldest lowest-severity events are dropped (and counted)"
    )
    history_events: int = Field(
        default=5000, ge=0, description="Delivered events kept for `edge_agent events`"
    )
    memory_events: int = Field(
        default=1000, ge=1, description="Events held in memory while the disk refuses writes "
        "(full, I/O error, locked); beyond it the oldest lowest-severity are dropped, logged "
        "with their content and counted"
    )
    retry_s: float = Field(
        default=5.0, gt=0, description="Seconds between attempts to write held events to a "
        "disk that refused them"
    )


class TlsConfig(StrictModel):
    """TLS to the broker; ``certfile``/``keyfile`` for client-certificate authentication."""

    ca_file: Path | None = Field(default=None, description="CA bundle (default: system store)")
    certfile: Path | None = Field(default=None, description="Client certificate (PEM)")
    keyfile: Path | None = Field(
        default=None, description="Client private key (PEM); refused if other users can read it"
    )
    insecure: bool = Field(
        default=False, description="Skip host name verification (test benches only)"
    )

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together")
        return self


MQTT_MAX_EXPIRY_S = 2**32 - 1  # the v5 Message Expiry Interval is a four-byte integer


class MqttConfig(StrictModel):
    """The broker events go to. Without this section, events stay in the store and the log."""

    host: str = Field(min_length=1, description="Broker host name or IP address")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port (8883 for TLS)")
    client_id: str | None = Field(
        default=None, description="MQTT client id (default: edge-agent-<machine_id>)"
    )
    username: str | None = Field(default=None, description="User name")
    password: SecretStr | None = Field(default=None, description="Password (prefer password_file)")
    password_file: Path | None = Field(
        default=None, description="File holding the password (kept out of the config); refused "
        "if other users can read it"
    )
    tls: TlsConfig | None = Field(default=None, description="TLS settings; absent: plain TCP")
    topic_prefix: str = Field(
        default="edge", min_length=1, description="Topics: <prefix>/<machine_id>/{events,status}"
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive in s")
    heartbeat_s: float = Field(
        default=60.0, gt=0, description="Seconds between health heartbeats on the status topic"
    )
    max_inflight: int = Field(
        default=16, ge=1, le=1000, description="Events published but not yet acknowledged"
    )
    backoff_initial_s: float = Field(default=1.0, gt=0, description="First reconnect wait in s")
    backoff_max_s: float = Field(default=60.0, gt=0, description="Cap of the reconnect wait in s")
    ack_timeout_s: float = Field(
        default=30.0, gt=0, description="Seconds to wait for the PUBACK of an event in flight; "
        "beyond it the connection is dropped and the events are re-sent in order on a new one"
    )
    event_expiry_s: int | None = Field(
        default=None, ge=1, le=MQTT_MAX_EXPIRY_S, description="MQTT v5 message expiry of "
        "events in s: the broker discards an event no subscriber has taken within this time "
        "(absent: events never expire)"
    )

    @model_validator(mode="after")
    def _checks(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        if "#" in self.topic_prefix or "+" in self.topic_prefix:
            raise ValueError("topic_prefix may not contain MQTT wildcards '#' or '+'")
        return self
