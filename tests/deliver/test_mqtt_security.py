"""The uplink's TLS, client certificates and passwords against a real Mosquitto.

Certificates are made here with ``cryptography`` (a CA, a broker certificate for
``localhost``, a client certificate, and a rogue CA the broker does not trust); the broker
requires a client certificate on its TLS listener. A refused connection must leave the event
in the outbox, count a failure, be logged, and never log the password.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from broker import BrokerTls, Mosquitto, Subscriber
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from deliver_support import MACHINE, UplinkFactory, make_event, mqtt_config, wait_until

from edge_agent.deliver.config import MqttConfig, TlsConfig
from edge_agent.deliver.mqtt import MqttUplink
from edge_agent.deliver.outbox import Outbox
from edge_agent.errors import ConfigError

EVENTS = f"edge/{MACHINE}/events"
DELIVERY_WAIT_S = 15.0
REFUSAL_WAIT_S = 1.0  # several fast-backoff attempts
CERT_DAYS = 2
USER, PASSWORD = "gateway-7", "s3cret-Pa55word"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from a CA the broker does not know
    rogue_key: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return path


def _issue(
    cn: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False, server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True,
        ).add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if issuer is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False,
            )
    if server:
        # Only the name: connecting by IP address must fail the host name check.
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    pem = serialization.Encoding.PEM
    ca_key, rogue_ca_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1()
    )
    ca = _issue("test CA", ca_key, None, ca_key, ca=True)
    rogue_ca = _issue("rogue CA", rogue_ca_key, None, rogue_ca_key, ca=True)
    files = {}
    for name, issuer, issuer_key, server in (
        ("server", ca, ca_key, True), ("client", ca, ca_key, False),
        ("rogue", rogue_ca, rogue_ca_key, False),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(f"{name}.test", key, issuer, issuer_key, server=server)
        (d / f"{name}.crt").write_bytes(cert.public_bytes(pem))
        files[name] = (d / f"{name}.crt", _write_key(key, d / f"{name}.key"))
    (d / "ca.crt").write_bytes(ca.public_bytes(pem))
    return Pki(d / "ca.crt", *files["server"], *files["client"], *files["rogue"])


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


@pytest.mark.parametrize("case", ["no client certificate", "untrusted client certificate",
                                  "host name mismatch"])
def test_tls_refusals_keep_the_event(
    case: str, tls_broker: Mosquitto, pki: Pki, outbox: Outbox, start_uplink: UplinkFactory
) -> None:
    tls = {
        "no client certificate": TlsConfig(ca_file=pki.ca),
        "untrusted client certificate": TlsConfig(
            ca_file=pki.ca, certfile=pki.rogue_cert, keyfile=pki.rogue_key
        ),
        "host name mismatch": TlsConfig(
            ca_file=pki.ca, certfile=pki.client_cert, keyfile=pki.client_key
        ),
    }[case]
    host = "127.0.0.1" if case == "host name mismatch" else "localhost"
    outbox.add(make_event(1))
    uplink = start_uplink(_tls_cfg(tls_broker, tls, host), outbox)
    wait_until(lambda: uplink.stats()["connect_failures"] >= 2, DELIVERY_WAIT_S, "retries")
    assert not uplink.connected
    assert outbox.depth() == 1


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
    secret = tmp_path / "mqtt.pass"
    secret.write_text(PASSWORD + "\n")  # as an editor saves it
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
