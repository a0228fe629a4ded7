"""The /metrics endpoint over real sockets: what it serves, that it stays bounded under idle
and slow-loris connections, and that a port it cannot bind is a warning, never a crash.

Security (basic auth, TLS, client certificates, exposure warnings) is in
``test_metrics_security.py``, which reuses the fixtures and helpers here.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import os
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from metrics_support import sample_snapshot
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_for

from edge_agent.config.model import MetricsConfig
from edge_agent.metrics import AgentMetrics
from edge_agent.metrics_server import MAX_REQUEST_BYTES

REPO = Path(__file__).resolve().parents[2]
LOCALHOST = "127.0.0.1"
CLIENT_TIMEOUT_S = 5.0
THREAD_EXIT_WAIT_S = 3.0
SERVER_THREADS = ("edge-metrics-http", "edge-metrics-conn")
TCP_LISTEN = "0A"  # the LISTEN state in /proc/net/tcp

# Metric names tests/edge_agent/agent and the README rely on; every one must stay.
EXPORTED = {
    "edge_agent_rows", "edge_agent_windows_screened", "edge_agent_stage2_windows",
    "edge_agent_events", "edge_agent_inference_seconds", "edge_agent_source_samples",
    "edge_agent_source_polls", "edge_agent_source_poll_errors", "edge_agent_source_reconnects",
    "edge_agent_source_malformed", "edge_agent_outbox_depth", "edge_agent_outbox_dropped",
    "edge_agent_mqtt_connected", "edge_agent_channel_faulty", "edge_agent_model_info",
    "edge_agent_metrics_refused", "edge_agent_windows_skipped", "edge_agent_loop_errors",
    "edge_agent_clock_steps", "edge_agent_thread_up", "edge_agent_thread_crashes",
    "edge_agent_thread_down_seconds", "edge_agent_outbox_degraded", "edge_agent_outbox_held",
    "edge_agent_outbox_store_errors", "edge_agent_outbox_memory_dropped",
    "edge_agent_outbox_quarantined", "edge_agent_mqtt_publish_refused",
    "edge_agent_mqtt_ack_timeouts", "edge_agent_mqtt_session_takeovers",
    "edge_agent_mqtt_connection_losses", "edge_agent_score_ratio", "edge_agent_alert",
    "edge_agent_channel_error_share",
}


@dataclass
class Served:
    metrics: AgentMetrics
    port: int

    def refused(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "edge_agent_metrics_refused_total", {"reason": reason}
        )
        return value or 0.0


Serve = Callable[..., Served]


def server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(SERVER_THREADS)]


@contextlib.contextmanager
def serving() -> Iterator[Serve]:
    """``serve(**metrics_fields)``: an AgentMetrics serving on a free loopback port; all are
    closed on exit, which must leave no server thread behind. Each test file's ``serve``
    fixture is this."""
    made: list[AgentMetrics] = []

    def start(**fields: Any) -> Served:
        metrics = AgentMetrics(sample_snapshot)
        made.append(metrics)
        port = metrics.serve(MetricsConfig(**{"port": 0, **fields}))
        assert port is not None
        return Served(metrics, port)

    yield start
    for metrics in made:
        metrics.close()
    assert wait_for(lambda: not server_threads(), THREAD_EXIT_WAIT_S), (
        f"server threads left: {server_threads()}"
    )


@pytest.fixture
def serve() -> Iterator[Serve]:
    with serving() as start:
        yield start


def scrape(
    port: int, *, method: str = "GET", path: str = "/metrics",
    context: ssl.SSLContext | None = None, headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on a fresh connection: status, headers, body."""
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(LOCALHOST, port, timeout=CLIENT_TIMEOUT_S)
    else:
        conn = http.client.HTTPSConnection(
            "localhost", port, timeout=CLIENT_TIMEOUT_S, context=context
        )
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def _closed_by_peer(sock: socket.socket, wait_s: float) -> bool:
    """True when the server has closed ``sock`` (EOF or reset) within ``wait_s``."""
    readable, _, _ = select.select([sock], [], [], wait_s)
    if not readable:
        return False
    try:
        return sock.recv(1024) == b""
    except ConnectionError:
        return True


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- what it serves ---------------------------------------------------------------------------
def test_scrape_serves_every_metric_the_agent_exports(serve: Serve) -> None:
    served = serve()
    served.metrics.rows.inc(5)
    served.metrics.events.labels("anomaly", "open").inc()
    status, headers, body = scrape(served.port)
    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE_LATEST
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families.keys() >= EXPORTED
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("edge_agent_rows_total", ())] == 5
    assert samples[("edge_agent_source_samples_total", (("source", "plc"),))] == 40
    assert samples[("edge_agent_channel_faulty", (("channel", "oil_temp_c"),))] == 1
    assert samples[("edge_agent_events_total", (("kind", "anomaly"), ("state", "open")))] == 1


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("HEAD", "/metrics", 200),
    ("GET", "/metrics?name[]=edge_agent_rows_total", 200),
    ("GET", "/", 404),
    ("GET", "/metrics/extra", 404),
    ("POST", "/metrics", 405),
    ("DELETE", "/metrics", 405),
])
def test_paths_and_methods(serve: Serve, method: str, path: str, expected: int) -> None:
    served = serve()
    status, headers, body = scrape(served.port, method=method, path=path)
    assert status == expected
    if method == "HEAD":
        assert body == b""
        assert int(headers["Content-Length"]) > 0
    if expected == 405:
        assert headers["Allow"] == "GET, HEAD"
    assert "Python" not in headers["Server"]


def test_default_config_listens_on_loopback_only(serve: Serve) -> None:
    assert MetricsConfig().host == LOCALHOST
    served = serve()  # the default host
    listening = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, port = local.split(":")
        if int(port, 16) == served.port and state == TCP_LISTEN:
            listening.append(ipaddress.IPv4Address(bytes.fromhex(addr)[::-1]))
    assert listening == [ipaddress.IPv4Address(LOCALHOST)]


@pytest.mark.parametrize("path", sorted((REPO / "firmware_configs").glob("*.toml")),
                         ids=lambda p: p.name)
def test_shipped_configs_keep_metrics_on_loopback(path: Path) -> None:
    table = tomllib.loads(path.read_text()).get("metrics", {})
    assert ipaddress.ip_address(table.get("host", MetricsConfig().host)).is_loopback


# --- a port it cannot have ------------------------------------------------------------------
def test_port_in_use_is_a_warning_and_the_agent_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    holder = socket.create_server((LOCALHOST, 0))
    port = holder.getsockname()[1]
    metrics = AgentMetrics(sample_snapshot)
    try:
        with caplog.at_level(logging.WARNING, logger="edge_agent.metrics"):
            assert metrics.serve(MetricsConfig(port=port)) is None
        metrics.rows.inc()  # the counters still work without an endpoint
    finally:
        metrics.close()
        holder.close()
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert f"{LOCALHOST}:{port}" in warning[0].getMessage()
    assert "in use" in warning[0].getMessage()
    assert not server_threads()


def test_address_not_on_this_machine_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    metrics = AgentMetrics(sample_snapshot)
    with caplog.at_level(logging.WARNING, logger="edge_agent.metrics"):
        # 192.0.2.1 is TEST-NET-1: never assigned to a host, so never ours to bind.
        assert metrics.serve(MetricsConfig(host="192.0.2.1", port=0)) is None
    metrics.close()
    assert "192.0.2.1:0" in caplog.text
    assert "assign" in caplog.text  # "Cannot assign requested address"


# --- bounded under abuse --------------------------------------------------------------------
IDLE_CONNECTIONS = 2000
FLOOD_CAP = 8
FLOOD_READ_TIMEOUT_S = 1.0
OPEN_WITHIN_S = 15.0  # the child has all its connections open by then
SETTLE_S = 10.0  # every connection turned away or timed out by then
SCRAPE_WITHIN_S = 4.0  # from the flood's end: read timeouts free the slots in 1 s
SAMPLE_EVERY_S = 0.02
FD_SLACK = 2  # the accept thread's one connection in hand, and a scrape's client end
FLOODER_PIPES = 2  # its stdin and stdout, open in this process
NO_FD_ROOM = 3
# A separate process opens the idle connections, as an attacker on the network would: the
# server's threads and fds are then all this process has beyond its baseline. The connects are
# non-blocking, all in flight at once: a SYN the kernel drops while the listen queue is full is
# retried by TCP without holding up the others.
FLOODER = f"""
import resource, selectors, socket, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = n + 64
if soft < want:
    if hard != resource.RLIM_INFINITY and hard < want:
        sys.exit({NO_FD_ROOM})
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
pending = selectors.DefaultSelector()
socks = []
for _ in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("{LOCALHOST}", port))
    pending.register(s, selectors.EVENT_WRITE)
    socks.append(s)
while pending.get_map():
    for key, _ in pending.select():
        pending.unregister(key.fileobj)
        if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            sys.exit(1)
print("open", flush=True)
sys.stdin.read()  # hold them all until the test closes our stdin
"""


def test_idle_connection_flood_keeps_threads_and_fds_bounded(serve: Serve) -> None:
    served = serve(max_connections=FLOOD_CAP, read_timeout_s=FLOOD_READ_TIMEOUT_S)
    threads0, fds0 = threading.active_count(), _open_fds()
    peak_threads = peak_fds = 0

    def sample() -> None:
        nonlocal peak_threads, peak_fds
        peak_threads = max(peak_threads, threading.active_count() - threads0)
        peak_fds = max(peak_fds, _open_fds() - fds0 - FLOODER_PIPES)

    flooder = subprocess.Popen(
        [sys.executable, "-c", FLOODER, str(IDLE_CONNECTIONS), str(served.port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert flooder.stdin is not None
    assert flooder.stdout is not None
    try:
        deadline = time.monotonic() + OPEN_WITHIN_S
        while not select.select([flooder.stdout], [], [], SAMPLE_EVERY_S)[0]:
            sample()
            assert time.monotonic() < deadline, "the flooder could not open its connections"
        if flooder.stdout.readline().strip() != "open":
            if flooder.wait() == NO_FD_ROOM:
                pytest.skip(f"the fd hard limit is below {IDLE_CONNECTIONS} connections")
            pytest.fail(f"the flooder failed with exit status {flooder.returncode}")
        # A real scrape gets through while all 2,000 are still open, once read timeouts
        # have freed the slots the first idle ones took.
        t0 = time.monotonic()
        status = 0
        while status != 200 and time.monotonic() - t0 < SCRAPE_WITHIN_S:
            sample()
            status = scrape(served.port)[0]
        assert status == 200, "no scrape got through the idle connections"

        def settled() -> bool:
            sample()
            return served.refused("busy") + served.refused("timeout") >= IDLE_CONNECTIONS

        assert wait_for(settled, SETTLE_S), (
            f"busy {served.refused('busy')}, timeout {served.refused('timeout')}"
        )
    finally:
        flooder.stdin.close()
        flooder.wait(CLIENT_TIMEOUT_S)
        flooder.stdout.close()
    assert served.refused("timeout") >= FLOOD_CAP  # the ones let in were dropped when idle
    assert peak_threads <= FLOOD_CAP, f"{peak_threads} server threads"
    assert peak_fds <= FLOOD_CAP + FD_SLACK, f"{peak_fds} server fds"


def test_connection_over_the_cap_is_answered_503_at_once(serve: Serve) -> None:
    served = serve(max_connections=1, read_timeout_s=30)
    with socket.create_connection((LOCALHOST, served.port)) as idle:
        assert wait_for(lambda: len(server_threads()) == 2)  # accept + the idle one's
        t0 = time.monotonic()
        status, headers, _ = scrape(served.port)
        assert status == 503
        assert headers["Retry-After"] == "1"
        assert time.monotonic() - t0 < 1.0
        assert served.refused("busy") == 1
        idle.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")  # the one let in is still served
        assert idle.recv(64).startswith(b"HTTP/1.0 200")


SLOW_READ_TIMEOUT_S = 2.0
TRICKLE = b"GET /metrics HTTP/1.1\r\nHost: gateway\r\n"  # never the blank line that ends it
BYTE_EVERY_S = 1.0


def test_slow_loris_is_dropped_after_read_timeout(serve: Serve) -> None:
    served = serve(read_timeout_s=SLOW_READ_TIMEOUT_S)
    dropped_after = None
    with socket.create_connection((LOCALHOST, served.port)) as sock:
        t0 = time.monotonic()
        for byte in TRICKLE[: int(SLOW_READ_TIMEOUT_S / BYTE_EVERY_S) + 4]:
            try:
                sock.send(bytes([byte]))
            except ConnectionError:
                dropped_after = time.monotonic() - t0
                break
            if _closed_by_peer(sock, BYTE_EVERY_S):
                dropped_after = time.monotonic() - t0
                break
    assert dropped_after is not None, "a client trickling one byte a second was never dropped"
    assert SLOW_READ_TIMEOUT_S - 0.1 <= dropped_after <= SLOW_READ_TIMEOUT_S + BYTE_EVERY_S
    assert served.refused("timeout") == 1


def test_oversized_request_head_is_refused(serve: Serve) -> None:
    served = serve()
    filler = "x" * 1000
    headers = {f"X-Filler-{i}": filler for i in range(MAX_REQUEST_BYTES // 1000 + 1)}
    status, _, _ = scrape(served.port, headers=headers)
    assert status == 431
    assert served.refused("too_large") == 1


def test_close_cuts_open_connections_and_joins_their_threads() -> None:
    metrics = AgentMetrics(sample_snapshot)
    port = metrics.serve(MetricsConfig(port=0, read_timeout_s=60))
    assert port is not None
    with socket.create_connection((LOCALHOST, port)) as idle:
        assert wait_for(lambda: len(server_threads()) == 2)
        t0 = time.monotonic()
        metrics.close()
        assert time.monotonic() - t0 < 2.0
        assert not server_threads()
        assert _closed_by_peer(idle, 1.0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOCALHOST, port), CLIENT_TIMEOUT_S).close()
