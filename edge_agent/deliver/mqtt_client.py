"""Building a configured paho client for the uplink: TLS, credentials and the last will.

Used by ``edge_agent.deliver.mqtt``, which makes a fresh client for every connection attempt
(so no message paho queued for a dead connection is re-sent behind the uplink's back: the
outbox alone decides what is sent, and in which order). Files are read once, at
:func:`load_security` during the uplink's start, so a missing key or password file is a
config error the operator sees at once, not a reconnect loop; the password is never logged
nor shown in a repr.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

from paho.mqtt.client import Client, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.deliver.config import MqttConfig, TlsConfig
from edge_agent.errors import ConfigError

CONNECT_TIMEOUT_S = 5.0  # TCP connect + TLS handshake; a dead host must not stall the uplink
# Room beyond max_inflight so a status message (birth, heartbeat, offline) never waits in
# paho's queue behind a full window of events.
STATUS_INFLIGHT_SLOTS = 4


@dataclass(frozen=True)
class Security:
    """What a connection needs from disk, read once at start."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = None


def _tls_context(tls: TlsConfig) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(
            cafile=str(tls.ca_file) if tls.ca_file is not None else None
        )
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"mqtt.tls.ca_file {tls.ca_file}: cannot load the CA: {err}") from err
    if tls.certfile is not None:
        try:
            ctx.load_cert_chain(str(tls.certfile), str(tls.keyfile) if tls.keyfile else None)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(
                f"mqtt.tls.certfile {tls.certfile} / keyfile {tls.keyfile}: cannot load the "
                f"client certificate: {err}"
            ) from err
    # Only the host name check is skipped: the broker's certificate must still chain to the CA.
    ctx.check_hostname = not tls.insecure
    return ctx


def load_security(cfg: MqttConfig) -> Security:
    """Read the password file and TLS files; raises ConfigError naming the file."""
    password: str | None = None
    if cfg.password is not None:
        password = cfg.password.get_secret_value()
    elif cfg.password_file is not None:
        try:
            # Only the line break an editor adds is stripped: spaces may be part of it.
            password = cfg.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(
                f"mqtt.password_file {cfg.password_file}: cannot read the password: {err}"
            ) from err
    if password is not None and cfg.username is None:
        raise ConfigError("mqtt: a password needs a username (MQTT 3.1.1 allows none without)")
    ctx = _tls_context(cfg.tls) if cfg.tls is not None else None
    return Security(cfg.username, password, ctx)


def new_client(
    cfg: MqttConfig,
    client_id: str,
    security: Security,
    *,
    will_topic: str,
    will: bytes,
    userdata: Any,
) -> Client:
    """An unconnected client with credentials, TLS and the retained last will set.

    Clean session and no automatic reconnect: after a loss the uplink starts over from the
    outbox with a new client, so paho must not keep or replay state of its own.
    """
    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=True,
        userdata=userdata,
        protocol=MQTTv311,
        reconnect_on_failure=False,
    )
    client.connect_timeout = CONNECT_TIMEOUT_S
    client.max_inflight_messages_set(cfg.max_inflight + STATUS_INFLIGHT_SLOTS)
    if security.username is not None:
        client.username_pw_set(security.username, security.password)
    if security.ssl_context is not None:
        client.tls_set_context(security.ssl_context)
    client.will_set(will_topic, will, qos=1, retain=True)
    return client
