"""Building a configured paho client for the uplink: MQTT v5, TLS, credentials, the last will.

Used by ``edge_agent.deliver.link``, which makes a fresh client for every connection attempt
(so no message paho queued for a dead connection is re-sent behind the uplink's back: the
outbox alone decides what is sent, and in which order). The client speaks MQTT v5, whose
PUBACK carries a reason code: a broker that refuses a publish (its ACL denies the topic)
says so, where MQTT 3.1.1 acknowledged the publish and dropped it silently.

Files are read once, at :func:`load_security` during the uplink's start, so a missing key or
password file, or one other users can read, is a config error the operator sees at once,
not a reconnect loop; the password is never logged nor shown in a repr.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
from dataclasses import dataclass, field
from typing import Any

from paho.mqtt.client import Client, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config.secrets import check_secret_file, read_secret_file
from edge_agent.deliver.config import MqttConfig, TlsConfig
from edge_agent.errors import ConfigError

CONNECT_TIMEOUT_S = 5.0  # TCP connect + TLS handshake; a dead host must not stall the uplink
# Room beyond max_inflight so a status message (birth, heartbeat, offline) never waits in
# paho's queue behind a full window of events.
STATUS_INFLIGHT_SLOTS = 4
JSON_CONTENT_TYPE = "application/json"
UTF8_PAYLOAD = 1  # v5 Payload Format Indicator: the payload is UTF-8 text
# Payload fields copied into v5 user properties, so a broker rule or a shared-subscription
# consumer can route events without parsing them.
EVENT_PROPERTY_FIELDS = ("kind", "schema", "state", "severity")


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
        if tls.keyfile is not None:
            check_secret_file(tls.keyfile, "mqtt.tls.keyfile")
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
        password = read_secret_file(cfg.password_file, "mqtt.password_file")
    if password is not None and cfg.username is None:
        raise ConfigError("mqtt: a password needs a username (mqtt.username)")
    ctx = _tls_context(cfg.tls) if cfg.tls is not None else None
    return Security(cfg.username, password, ctx)


def is_loopback_host(host: str) -> bool:
    """``host`` names this machine (``localhost`` or a loopback address). Names are not
    resolved: start-up must not wait for DNS, and a name that happens to resolve to
    127.0.0.1 here may not on the next network."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def plaintext_password(cfg: MqttConfig) -> bool:
    """A password would cross the network unencrypted: no TLS to a host off this machine."""
    has_password = cfg.password is not None or cfg.password_file is not None
    return has_password and cfg.tls is None and not is_loopback_host(cfg.host)


def json_properties(packet: int = PacketTypes.PUBLISH) -> Properties:
    """v5 properties saying the payload is JSON text (for consumers and broker rules)."""
    props = Properties(packet)  # type: ignore[no-untyped-call]  # paho leaves it untyped
    props.PayloadFormatIndicator = UTF8_PAYLOAD
    props.ContentType = JSON_CONTENT_TYPE
    return props


def row_properties(
    payload: bytes, *, machine_id: str, row_id: str, expiry_s: int | None
) -> Properties:
    """The v5 properties of an outbox row: machine and row id, and for a JSON object the
    routing fields above, as user properties; the JSON content type only when the payload
    is JSON (a message may be binary); ``expiry_s`` as Message Expiry Interval."""
    try:
        body = json.loads(payload)
    except ValueError:  # not JSON, or not UTF-8: the outbox keeps what its caller gave
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        body = None
    else:
        props = json_properties()
    pairs = [("machine_id", machine_id), ("event_id", row_id)]
    if isinstance(body, dict):
        pairs += [(k, str(body[k])) for k in EVENT_PROPERTY_FIELDS if k in body]
    props.UserProperty = pairs
    if expiry_s is not None:
        props.MessageExpiryInterval = expiry_s
    return props


def new_client(
    cfg: MqttConfig,
    client_id: str,
    security: Security,
    *,
    will_topic: str,
    will: bytes,
    userdata: Any,
) -> Client:
    """An unconnected MQTT v5 client with credentials, TLS and the retained last will set.

    No automatic reconnect, and the link connects with ``clean_start`` and no session
    expiry: after a loss the uplink starts over from the outbox with a new client, so
    neither paho nor the broker may keep or replay state of their own.
    """
    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        userdata=userdata,
        protocol=MQTTv5,
        reconnect_on_failure=False,
    )
    client.connect_timeout = CONNECT_TIMEOUT_S
    client.max_inflight_messages_set(cfg.max_inflight + STATUS_INFLIGHT_SLOTS)
    if security.username is not None:
        client.username_pw_set(security.username, security.password)
    if security.ssl_context is not None:
        client.tls_set_context(security.ssl_context)
    client.will_set(
        will_topic, will, qos=1, retain=True, properties=json_properties(PacketTypes.WILLMESSAGE)
    )
    return client
