"""Scraping /metrics across a network safely: basic auth, HTTPS, client certificates, the
secret-file checks on the password and key, and the warning for an unprotected exposure.

Certificates are made here with ``cryptography``: a CA, the gateway's server certificate for
``localhost``, a scraper's client certificate, and one from a rogue CA. Everything runs over
real sockets and real TLS.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import logging
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError
from test_metrics_endpoint import LOCALHOST, Serve, scrape, serving
from waiting import wait_for

from edge_agent.config.model import MetricsConfig
from edge_agent.errors import ConfigError
from edge_agent.metrics import AgentMetrics

USER, PASSWORD = "prometheus", "s3cret Pa55:word"  # a space and a colon: both legal
CERT_VALID_DAYS = 2
SECRET_MODE = 0o600
SHARED_MODE = 0o644  # readable by every user of the gateway
COUNT_WAIT_S = 2.0


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def serve() -> Iterator[Serve]:
    with serving() as start:
        yield start


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "metrics.password"
    path.write_text(PASSWORD + "\n")  # as an editor saves it
    path.chmod(SECRET_MODE)
    return path


# --- basic auth -------------------------------------------------------------------------------
def test_basic_auth_refuses_missing_and_wrong_credentials(
    serve: Serve, password_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="edge_agent"):
        served = serve(username=USER, password_file=password_file)
        status, headers, _ = scrape(served.port)
        assert status == 401
        assert headers["WWW-Authenticate"].startswith('Basic realm="')
        for user, password in ((USER, "wrong"), ("intruder", PASSWORD), (USER, PASSWORD + "x")):
            assert scrape(served.port, headers=_basic(user, password))[0] == 401
        assert scrape(served.port, headers={"Authorization": "Basic !!not-base64"})[0] == 401
        assert scrape(served.port, headers={"Authorization": "Bearer " + PASSWORD})[0] == 401
        status, _, body = scrape(served.port, headers=_basic(USER, PASSWORD))
    assert status == 200
    assert b"edge_agent_rows_total" in body
    assert served.refused("unauthorized") == 6
    assert PASSWORD not in caplog.text


def test_a_password_file_others_can_read_is_refused(password_file: Path) -> None:
    password_file.chmod(SHARED_MODE)
    metrics = AgentMetrics(dict)
    with pytest.raises(ConfigError, match=r"metrics\.password_file .*0644") as err:
        metrics.serve(MetricsConfig(port=0, username=USER, password_file=password_file))
    assert PASSWORD not in str(err.value)
    metrics.close()


def test_an_empty_password_file_is_refused(password_file: Path) -> None:
    password_file.write_text("\n")
    metrics = AgentMetrics(dict)
    with pytest.raises(ConfigError, match=r"metrics\.password_file .*empty"):
        metrics.serve(MetricsConfig(port=0, username=USER, password_file=password_file))
    metrics.close()


@pytest.mark.parametrize(("fields", "message"), [
    ({"password_file": "/etc/edge-agent/metrics.password"}, "both username and password_file"),
    ({"username": USER}, "both username and password_file"),
    ({"username": "a:b", "password_file": "/p"}, "may not contain ':'"),
    ({"tls": {"certfile": "/c.pem"}}, "keyfile"),
    ({"max_connections": 0}, "max_connections"),
    ({"read_timeout_s": 0}, "read_timeout_s"),
    ({"password": "inline"}, "password"),  # only a file may hold it
])
def test_config_validation(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MetricsConfig.model_validate(fields)


# --- TLS --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from a CA the gateway does not trust
    rogue_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _sign(
    builder: x509.CertificateBuilder, subject: str, key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        builder.subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_VALID_DAYS))
        .sign(issuer_key, hashes.SHA256())
    )


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
        key_encipherment=False, data_encipherment=False, key_agreement=False,
        encipher_only=False, decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return _sign(builder, cn, key, _name(cn), key), key


def _leaf(
    d: Path, name: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], *, server: bool
) -> tuple[Path, Path]:
    """A certificate (for ``localhost`` when ``server``) and its key, as PEM files; the key
    is private to its owner, as the agent's secret-file check requires."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    cert = _sign(builder, f"{name}.test", key, ca_cert.subject, ca_key)
    cert_path, key_path = d / f"{name}.crt", d / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    key_path.chmod(SECRET_MODE)
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, rogue_ca = _ca("test CA"), _ca("rogue CA")
    (d / "ca.crt").write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    return Pki(
        d / "ca.crt", *_leaf(d, "server", ca, server=True), *_leaf(d, "client", ca, server=False),
        *_leaf(d, "rogue", rogue_ca, server=False),
    )


def _client(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def test_https_scrape_with_the_ca_and_plain_http_refused(serve: Serve, pki: Pki) -> None:
    served = serve(tls={"certfile": pki.server_cert, "keyfile": pki.server_key})
    status, _, body = scrape(served.port, context=_client(pki))
    assert status == 200
    assert b"edge_agent_rows_total" in body
    with pytest.raises((OSError, http.client.HTTPException)):
        scrape(served.port)  # plain HTTP to the TLS port
    assert wait_for(lambda: served.refused("tls") == 1, COUNT_WAIT_S)
    with pytest.raises(ssl.SSLCertVerificationError):
        scrape(served.port, context=ssl.create_default_context())  # not the system's CAs


def test_client_certificate_required_when_client_ca_is_set(serve: Serve, pki: Pki) -> None:
    served = serve(tls={
        "certfile": pki.server_cert, "keyfile": pki.server_key, "client_ca_file": pki.ca,
    })
    for refused in (_client(pki), _client(pki, pki.rogue_cert, pki.rogue_key)):
        with pytest.raises((OSError, http.client.HTTPException)):
            scrape(served.port, context=refused)
    assert wait_for(lambda: served.refused("tls") == 2, COUNT_WAIT_S)
    status, _, _ = scrape(served.port, context=_client(pki, pki.client_cert, pki.client_key))
    assert status == 200


def test_tls_and_basic_auth_together(serve: Serve, pki: Pki, password_file: Path) -> None:
    served = serve(
        tls={"certfile": pki.server_cert, "keyfile": pki.server_key},
        username=USER, password_file=password_file,
    )
    assert scrape(served.port, context=_client(pki))[0] == 401
    assert scrape(served.port, context=_client(pki), headers=_basic(USER, PASSWORD))[0] == 200


def test_a_stalled_tls_handshake_neither_blocks_others_nor_stays(serve: Serve, pki: Pki) -> None:
    served = serve(
        tls={"certfile": pki.server_cert, "keyfile": pki.server_key}, read_timeout_s=1.0
    )
    with socket.create_connection((LOCALHOST, served.port)) as stalled:
        # The handshake runs in the connection's own thread, not the accept thread.
        assert scrape(served.port, context=_client(pki))[0] == 200
        assert wait_for(lambda: served.refused("timeout") == 1, COUNT_WAIT_S)
        stalled.settimeout(COUNT_WAIT_S)
        assert stalled.recv(16) == b""


def test_a_server_key_others_can_read_is_refused(pki: Pki, tmp_path: Path) -> None:
    key = tmp_path / "server.key"
    key.write_bytes(pki.server_key.read_bytes())
    key.chmod(SHARED_MODE)
    metrics = AgentMetrics(dict)
    with pytest.raises(ConfigError, match=r"metrics\.tls\.keyfile"):
        metrics.serve(MetricsConfig(port=0, tls={"certfile": pki.server_cert, "keyfile": key}))
    metrics.close()


def test_a_certificate_that_does_not_load_is_a_config_error(pki: Pki) -> None:
    metrics = AgentMetrics(dict)
    with pytest.raises(ConfigError, match=r"metrics\.tls\.certfile .*cannot load"):
        # The CA's certificate does not match the server's key.
        metrics.serve(MetricsConfig(port=0, tls={"certfile": pki.ca, "keyfile": pki.server_key}))
    metrics.close()


# --- exposure ---------------------------------------------------------------------------------
ALL_INTERFACES = "0.0.0.0"


@pytest.mark.parametrize(("protection", "missing"), [
    ("none", "without TLS/auth"),
    ("auth", "without TLS"),
    ("tls", "without auth"),
    ("tls+auth", None),
    ("tls+client certificates", None),
])
def test_exposure_beyond_loopback_is_warned_unless_protected(
    serve: Serve, pki: Pki, password_file: Path, caplog: pytest.LogCaptureFixture,
    protection: str, missing: str | None,
) -> None:
    fields: dict[str, object] = {"host": ALL_INTERFACES}
    tls = {"certfile": pki.server_cert, "keyfile": pki.server_key}
    if "client" in protection:
        tls["client_ca_file"] = pki.ca
    if "tls" in protection:
        fields["tls"] = tls
    if "auth" in protection:
        fields.update(username=USER, password_file=password_file)
    with caplog.at_level(logging.INFO, logger="edge_agent.metrics"):
        served = serve(**fields)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if missing is None:
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert f"metrics exposed on {ALL_INTERFACES}:{served.port} {missing}:" in warnings[0]


def test_loopback_without_protection_is_not_warned(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="edge_agent.metrics"):
        served = serve()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"metrics on http://{LOCALHOST}:{served.port}/metrics" in caplog.text
