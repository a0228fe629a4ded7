"""The uplink's TLS, client certificates and passwords against a real Mosquitto.

Certificates come from ``tests/pki.py`` (a CA, a broker certificate for ``localhost``, a
client certificate, and one from a rogue CA the broker does not trust); the broker requires a
client certificate on its TLS listener. A refused connection must leave the event in the
outbox, count a failure, be logged, and never log the password. Secret files (password,
client key) are refused when other users can read them.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import BrokerTls, Mosquitto, Subscriber, free_port
from deliver_support import MACHINE, UplinkFactory, make_event, mqtt_config, wait_until
from pki import Pki, write_pki, write_secret

from edge_agent.deliver.config import MqttConfig, TlsConfig
from edge_agent.deliver.mqtt import MqttUplink
from edge_agent.deliver.outbox import Outbox
from edge_agent.errors import ConfigError

EVENTS = f"edge/{MACHINE}/events"
DELIVERY_WAIT_S = 15.0
REFUSAL_WAIT_S = 1.0  # several fast-backoff attempts
USER, PASSWORD = "gateway-7", "s3cret-Pa55word"
SHARED_MODE = 0o644  # what an editor or `cp` leaves by default: every user can read it
UNROUTABLE = "192.0.2.1"  # TEST-NET-1: only used to pick this machine's outgoing interface


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "broker", tls=BrokerTls(
        pki.ca, pki.server_cert, pki.server_key, require_certificate=True,
    ))
    broker.start()
    yield broker
    broker.stop()


def _tls_cfg(broker: Mosquitto, tls: TlsConfig, host: str = "localhost") -> MqttConfig:
    assert broker.tls_port is not None
    return mqtt_config(broker.tls_port, tls=tls).model_copy(update={"host": host})


def test_tls_with_client_certificate_delivers(
    tls_broker: Mosquitto, pki: Pki, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    event = make_event(1)
    outbox.add(event)
    with Subscriber(tls_broker.port, EVENTS) as sub:
        start_uplink(_tls_cfg(tls_broker, TlsConfig(
            ca_file=pki.ca, certfile=pki.client_cert, keyfile=pki.client_key,
        )), outbox)
        msgs = sub.wait_for(1, DELIVERY_WAIT_S)
    assert msgs[0].json()["id"] == event.id
    wait_until(lambda: outbox.depth() == 0, DELIVERY_WAIT_S, "the PUBACK")


@pytest.mark.parametrize("case", ["no client certificate", "untrusted client certificate"])
def test_tls_refusals_keep_the_event(
    case: str, tls_broker: Mosquitto, pki: Pki, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    tls = {
        "no client certificate": TlsConfig(ca_file=pki.ca),
        "untrusted client certificate": TlsConfig(
            ca_file=pki.ca, certfile=pki.rogue_cert, keyfile=pki.rogue_key
        ),
    }[case]
    outbox.add(make_event(1))
    uplink = start_uplink(_tls_cfg(tls_broker, tls), outbox)
    wait_until(lambda: uplink.stats()["connect_failures"] >= 2, DELIVERY_WAIT_S, "retries")
    assert not uplink.connected
    assert outbox.depth() == 1


def test_certificate_for_another_host_is_named_retried_and_loses_nothing(
    tls_broker: Mosquitto, pki: Pki, outbox: Outbox, start_uplink: UplinkFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tls = TlsConfig(ca_file=pki.ca, certfile=pki.client_cert, keyfile=pki.client_key)
    event = make_event(1)
    outbox.add(event)
    with caplog.at_level(logging.WARNING, logger="edge_agent.deliver.mqtt"):
        # The broker's certificate names only "localhost"; the gateway dials the address.
        uplink = start_uplink(_tls_cfg(tls_broker, tls, host="127.0.0.1"), outbox)
        wait_until(lambda: uplink.stats()["connect_failures"] >= 2, DELIVERY_WAIT_S,
                   "retries")
        uplink.stop(0.0)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors, caplog.text
    message = errors[0].getMessage()
    assert "certificate is not valid for host '127.0.0.1'" in message
    assert "mqtt.host" in message  # says what to change
    assert outbox.depth() == 1
    with Subscriber(tls_broker.port, EVENTS) as sub:
        start_uplink(_tls_cfg(tls_broker, tls, host="localhost"), outbox)  # the fix
        assert sub.wait_for(1, DELIVERY_WAIT_S)[0].json()["id"] == event.id
    wait_until(lambda: outbox.depth() == 0, DELIVERY_WAIT_S, "the PUBACK")


def test_tls_insecure_skips_only_the_host_name_check(
    tls_broker: Mosquitto, pki: Pki, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    outbox.add(make_event(1))
    start_uplink(_tls_cfg(tls_broker, TlsConfig(
        ca_file=pki.ca, certfile=pki.client_cert, keyfile=pki.client_key, insecure=True,
    ), host="127.0.0.1"), outbox)
    wait_until(lambda: outbox.depth() == 0, DELIVERY_WAIT_S, "delivery over insecure TLS")


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed (it ships with the mosquitto package)")
    passwd = tmp_path / "passwd"
    subprocess.run([tool, "-c", "-b", str(passwd), USER, PASSWORD], check=True)
    broker = Mosquitto(tmp_path / "broker", password_file=passwd)
    broker.start()
    yield broker
    broker.stop()


def test_password_file_authenticates(
    password_broker: Mosquitto, tmp_path: Path, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    secret = write_secret(tmp_path / "mqtt.pass", PASSWORD + "\n")  # as an editor saves it
    outbox.add(make_event(1))
    uplink = start_uplink(
        mqtt_config(password_broker.port, username=USER, password_file=secret), outbox
    )
    wait_until(lambda: outbox.depth() == 0, DELIVERY_WAIT_S, "delivery with a password")
    assert uplink.stats()["connect_failures"] == 0


def test_wrong_password_is_refused_and_never_logged(
    password_broker: Mosquitto, outbox: Outbox, start_uplink: UplinkFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "not-the-" + PASSWORD
    outbox.add(make_event(1))
    with caplog.at_level(logging.DEBUG):
        uplink = start_uplink(
            mqtt_config(password_broker.port, username=USER, password=wrong), outbox
        )
        wait_until(lambda: uplink.stats()["connect_failures"] >= 2, DELIVERY_WAIT_S,
                   "refusals")
        time.sleep(REFUSAL_WAIT_S)
    assert not uplink.connected
    assert outbox.depth() == 1
    assert "refused: Not authorized" in caplog.text
    assert wrong not in caplog.text
    assert PASSWORD not in caplog.text
    assert wrong not in repr(uplink.stats())


def test_unreadable_secrets_fail_at_start_naming_the_file(
    tmp_path: Path, outbox: Outbox
) -> None:
    missing = tmp_path / "no-such.pass"
    uplink = MqttUplink(mqtt_config(1883, username=USER, password_file=missing), MACHINE,
                        outbox, dict)
    with pytest.raises(ConfigError, match=str(missing)):
        uplink.start()
    bad_ca = tmp_path / "no-such-ca.crt"
    uplink = MqttUplink(mqtt_config(8883, tls=TlsConfig(ca_file=bad_ca)), MACHINE, outbox, dict)
    with pytest.raises(ConfigError, match=str(bad_ca)):
        uplink.start()


@pytest.mark.parametrize("which", ["password_file", "tls.keyfile"])
def test_secret_files_other_users_can_read_are_refused(
    which: str, tmp_path: Path, pki: Pki, outbox: Outbox
) -> None:
    if which == "password_file":
        secret = write_secret(tmp_path / "mqtt.pass", PASSWORD, SHARED_MODE)
        cfg = mqtt_config(1883, username=USER, password_file=secret)
    else:
        secret = write_secret(tmp_path / "client.key", pki.client_key.read_bytes(), SHARED_MODE)
        cfg = mqtt_config(8883, tls=TlsConfig(
            ca_file=pki.ca, certfile=pki.client_cert, keyfile=secret,
        ))
    uplink = MqttUplink(cfg, MACHINE, outbox, dict)
    with pytest.raises(ConfigError, match=f"mqtt.{which} {secret}: .*readable") as err:
        uplink.start()
    assert "chmod" in str(err.value)  # the fix is in the message
    assert PASSWORD not in str(err.value)


def _this_machines_address() -> str | None:
    """A non-loopback IPv4 address of this machine (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((UNROUTABLE, 9))
        except OSError:
            return None
        addr = str(s.getsockname()[0])
    return None if addr.startswith("127.") else addr


@pytest.mark.parametrize("tls", [False, True])
def test_password_over_plain_tcp_to_another_host_is_warned_about(
    tls: bool, tmp_path: Path, pki: Pki, outbox: Outbox, start_uplink: UplinkFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = _this_machines_address()
    if host is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    secret = write_secret(tmp_path / "mqtt.pass", PASSWORD)
    extra = {"tls": TlsConfig(ca_file=pki.ca)} if tls else {}
    # A closed port on this machine's own address: refused at once, never reaches a broker.
    cfg = mqtt_config(free_port(), username=USER, password_file=secret, **extra)
    with caplog.at_level(logging.WARNING, logger="edge_agent.deliver.mqtt"):
        start_uplink(cfg.model_copy(update={"host": host}), outbox).stop(0.0)
        start_uplink(cfg.model_copy(update={"host": "localhost"}), outbox).stop(0.0)
    warned = [r.getMessage() for r in caplog.records if "unencrypted" in r.getMessage()]
    if tls:
        assert warned == []
    else:
        assert len(warned) == 1  # the remote host only, not localhost
        assert f"{host}:" in warned[0]
        assert repr(USER) in warned[0]
        assert "[mqtt.tls]" in warned[0]
    assert PASSWORD not in caplog.text
