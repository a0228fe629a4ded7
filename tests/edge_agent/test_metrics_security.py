"""Scraping /metrics across a network safely: basic auth, HTTPS, client certificates, the
secret-file checks on the password and key, and the warning for an unprotected exposure.

Certificates come from ``tests/pki.py``: a CA, the gateway's server certificate for
``localhost``, a scraper's client certificate, and one from a rogue CA. Everything runs over
real sockets and real TLS.
"""

from __future__ import annotations

import base64
import http.client
import logging
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from metrics_support import sample_snapshot
from pki import Pki, write_pki, write_secret
from pydantic import ValidationError
from test_metrics_endpoint import LOCALHOST, Serve, scrape, serving
from waiting import wait_for

from edge_agent.config.model import MetricsConfig
from edge_agent.errors import ConfigError
from edge_agent.metrics import AgentMetrics

USER, PASSWORD = "prometheus", "s3cret Pa55:word"  # a space and a colon: both legal
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
    return write_secret(tmp_path / "metrics.password", PASSWORD + "\n")  # as an editor saves it


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
    metrics = AgentMetrics(sample_snapshot)
    with pytest.raises(ConfigError, match=r"metrics\.password_file .*0644") as err:
        metrics.serve(MetricsConfig(port=0, username=USER, password_file=password_file))
    assert PASSWORD not in str(err.value)
    metrics.close()


def test_an_empty_password_file_is_refused(password_file: Path) -> None:
    password_file.write_text("\n")
    metrics = AgentMetrics(sample_snapshot)
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
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


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
    key = write_secret(tmp_path / "server.key", pki.server_key.read_bytes(), SHARED_MODE)
    metrics = AgentMetrics(sample_snapshot)
    with pytest.raises(ConfigError, match=r"metrics\.tls\.keyfile"):
        metrics.serve(MetricsConfig(port=0, tls={"certfile": pki.server_cert, "keyfile": key}))
    metrics.close()


def test_a_certificate_that_does_not_load_is_a_config_error(pki: Pki) -> None:
    metrics = AgentMetrics(sample_snapshot)
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
