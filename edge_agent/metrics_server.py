"""The HTTP(S) server behind ``/metrics``: small, bounded, and unable to hurt the agent.

Used by :class:`edge_agent.metrics.AgentMetrics`, beside the pipeline. A Prometheus scrape is
one short GET, so the server is built for exactly that on the standard library: one accept
thread, and a thread per connection only while fewer than ``max_connections`` are open; one
more is answered 503 (closed, over TLS) by the accept thread at once, so no client can make
the agent spend threads or file descriptors without bound. Each connection must deliver its
whole request head (TLS handshake included) within ``read_timeout_s`` of being accepted, so
idle or slow-loris connections free their slot; heads are capped at ``MAX_REQUEST_BYTES``.
One request per connection (HTTP/1.0 semantics), which is all a scraper needs.

Optional HTTPS (with client certificates when ``client_ca_file`` is set) and basic auth. Key
and password files are read once, at construction, through the secret-file checks, and a
problem with them is a :class:`ConfigError`; the password never appears in a message. Every
refused or dropped connection is counted through the ``refused`` hook and logged, throttled.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hmac
import io
import ipaddress
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from edge_agent.config.model import MetricsConfig, MetricsTlsConfig
from edge_agent.config.secrets import check_secret_file, read_secret_file
from edge_agent.errors import ConfigError
from edge_agent.logs import Throttle

log = logging.getLogger("edge_agent.metrics")

METRICS_PATH = "/metrics"
# A scrape's request line and headers take a few hundred bytes; 8 KiB leaves room for long
# proxy headers and refuses anything meant to fill memory.
MAX_REQUEST_BYTES = 8192
# Connections the kernel holds until the accept thread takes them: they cost no thread or fd of
# ours, and a burst (a flood, or many scrapers at once) waits here rather than having its SYNs
# dropped and retried seconds later; the accept thread turns a connection away in ~50 µs.
LISTEN_BACKLOG = 1024
POLL_INTERVAL_S = 0.5  # how soon the accept loop notices close()
JOIN_TIMEOUT_S = 5.0  # close() waits this long in all for connection threads to end
ACCEPT_BACKOFF_S = 0.1  # out of file descriptors: pause before accepting again, not spin
REPEAT_LOG_EVERY_S = 300.0  # a recurring refusal is logged once per this many seconds
REALM = "edge-agent metrics"
ACCEPT_THREAD = "edge-metrics-http"
CONNECTION_THREAD = "edge-metrics-conn"
_ACCEPT_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# Sent by the accept thread itself, without blocking, to a plain-HTTP connection over the cap.
BUSY_RESPONSE = (
    b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n"
)

Refused = Callable[[str], None]
"""Told the reason each time a connection is refused or dropped: ``busy`` (over the cap),
``timeout``, ``too_large``, ``tls`` (handshake failed) or ``unauthorized``."""


@dataclass(frozen=True)
class Credentials:
    """The basic-auth user and password scrapers must send."""

    username: bytes
    password: bytes = field(repr=False)

    def accept(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries these credentials (constant time)."""
        scheme, _, value = (authorization or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        # Both compared every time, so the timing does not tell which one was wrong.
        user_ok = hmac.compare_digest(user, self.username)
        password_ok = hmac.compare_digest(password, self.password)
        return bool(sep) and user_ok and password_ok


def load_credentials(cfg: MetricsConfig) -> Credentials | None:
    """The configured basic-auth credentials, or None; raises ConfigError for a password
    file that others can read, cannot be read, or is empty."""
    if cfg.username is None or cfg.password_file is None:
        return None
    key = "metrics.password_file"
    password = read_secret_file(cfg.password_file, key)
    if not password:
        raise ConfigError(f"{key} {cfg.password_file}: the password file is empty")
    return Credentials(cfg.username.encode("utf-8"), password.encode("utf-8"))


def load_tls(tls: MetricsTlsConfig) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or later); raises ConfigError naming the file."""
    check_secret_file(tls.keyfile, "metrics.tls.keyfile")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(tls.certfile), str(tls.keyfile))
    except OSError as err:  # ssl.SSLError among them
        raise ConfigError(
            f"metrics.tls.certfile {tls.certfile} / keyfile {tls.keyfile}: cannot load the "
            f"server certificate: {err}"
        ) from err
    if tls.client_ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(tls.client_ca_file))
        except OSError as err:
            raise ConfigError(
                f"metrics.tls.client_ca_file {tls.client_ca_file}: cannot load the CA: {err}"
            ) from err
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class _RequestTooLarge(Exception):
    pass


def _read_head(sock: socket.socket, deadline: float) -> bytes:
    """The request line and headers, which must all arrive before ``deadline`` (monotonic s)
    and within MAX_REQUEST_BYTES. Raises TimeoutError, _RequestTooLarge or ConnectionError."""
    buf = bytearray()
    while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
        if len(buf) > MAX_REQUEST_BYTES:
            raise _RequestTooLarge
        # The timeout is what is left of the whole allowance, not a fresh one per read: a
        # client trickling one byte a second is dropped all the same.
        _time_left(sock, deadline)
        chunk = sock.recv(MAX_REQUEST_BYTES + 1 - len(buf))
        if not chunk:
            raise ConnectionError("closed by the client before the end of its request")
        buf += chunk
    return bytes(buf)


def _time_left(sock: socket.socket, deadline: float) -> None:
    """Give ``sock`` what is left until ``deadline`` as its timeout; TimeoutError if nothing."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    sock.settimeout(remaining)


class _Handler(BaseHTTPRequestHandler):
    """One request on one connection: GET or HEAD of /metrics."""

    server: MetricsServer
    server_version = "edge-agent"

    def __init__(
        self, request: socket.socket, client_address: Any, server: MetricsServer,
        deadline: float | None = None,
    ) -> None:
        # When the whole request head must have arrived (monotonic s); the connection's
        # thread counts it from the accept, so a TLS handshake spends from the same allowance.
        self.deadline = (
            deadline if deadline is not None else time.monotonic() + server.cfg.read_timeout_s
        )
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO()  # replaced by the head once it has arrived
        # What parse_request would set, for an answer given before there is a request.
        self.command, self.request_version, self.requestline = "", "HTTP/1.0", ""
        self.wfile = self.connection.makefile("wb")

    def handle(self) -> None:
        try:
            head = _read_head(self.connection, self.deadline)
        except TimeoutError:
            self.server.refuse("timeout", self.client_address)
            return
        except _RequestTooLarge:
            self.server.refuse("too_large", self.client_address)
            self.connection.settimeout(self.server.cfg.read_timeout_s)
            self._reply(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            return
        self.rfile = io.BytesIO(head)
        # Taking the response gets its own allowance (sendall's timeout is a total).
        self.connection.settimeout(self.server.cfg.read_timeout_s)
        self.handle_one_request()

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.command not in ("GET", "HEAD"):
            self._reply(HTTPStatus.METHOD_NOT_ALLOWED, headers={"Allow": "GET, HEAD"})
            return False
        credentials = self.server.credentials
        if credentials is not None and not credentials.accept(self.headers.get("Authorization")):
            self.server.refuse("unauthorized", self.client_address)
            self._reply(
                HTTPStatus.UNAUTHORIZED,
                headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
            )
            return False
        return True

    def do_GET(self) -> None:  # http.server dispatches by this name
        if urlsplit(self.path).path != METRICS_PATH:
            self._reply(HTTPStatus.NOT_FOUND)
            return
        try:
            body = generate_latest(self.server.registry)
        except Exception:
            self.server.throttle.log(
                logging.WARNING, "collect", "metrics: collecting the metrics failed",
                exc_info=True,
            )
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR)
            return
        self._reply(HTTPStatus.OK, body, {"Content-Type": CONTENT_TYPE_LATEST})

    do_HEAD = do_GET  # _reply leaves the body out

    def _reply(
        self, status: HTTPStatus, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: %s %s", self.address_string(), format % args)


class MetricsServer(socketserver.TCPServer):
    """``/metrics`` for one registry, bounded by ``cfg.max_connections`` and
    ``cfg.read_timeout_s``. Construction reads the key and password files (ConfigError) and
    binds (OSError: address in use or not available); :meth:`start` serves, :meth:`close`
    stops and joins every thread it started."""

    request_queue_size = LISTEN_BACKLOG
    allow_reuse_address = True  # restart while old connections sit in TIME_WAIT

    def __init__(
        self, cfg: MetricsConfig, registry: CollectorRegistry, refused: Refused | None = None,
        *, repeat_every_s: float = REPEAT_LOG_EVERY_S,
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        self.refused = refused or (lambda _reason: None)
        self.throttle = Throttle(log, repeat_every_s)
        self.ssl_context = load_tls(cfg.tls) if cfg.tls is not None else None
        self.credentials = load_credentials(cfg)
        self._slots = threading.BoundedSemaphore(cfg.max_connections)
        self._lock = threading.Lock()
        self._open: dict[threading.Thread, socket.socket] = {}
        self._accept_thread: threading.Thread | None = None
        family, address = _listen_address(cfg.host, cfg.port)
        self.address_family = family
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = str(self.server_address[0])
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}{METRICS_PATH}"

    def start(self) -> None:
        self._warn_if_exposed()
        self._accept_thread = threading.Thread(
            target=self.serve_forever, args=(POLL_INTERVAL_S,), name=ACCEPT_THREAD, daemon=True
        )
        self._accept_thread.start()

    def close(self) -> None:
        """Stop accepting, cut the open connections and join every thread."""
        if self._accept_thread is not None:
            self.shutdown()
            self._accept_thread.join()
            self._accept_thread = None
        self.server_close()
        with self._lock:
            open_now = dict(self._open)
        for sock in open_now.values():
            # The plain socket's shutdown, also under TLS: it wakes a blocked recv or sendall
            # without touching the TLS state the connection's thread is using. OSError: its
            # thread closed it already.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for thread in open_now:
            thread.join(max(0.0, deadline - time.monotonic()))
        left = [t for t in open_now if t.is_alive()]
        if left:
            log.warning("metrics: %d connection thread(s) still running after close", len(left))

    def refuse(self, reason: str, client: Any) -> None:
        """Count and log (throttled) a connection refused or dropped for ``reason``."""
        self.refused(reason)
        self.throttle.warning(
            f"refused-{reason}", "metrics: dropped a connection from %s (%s)",
            _peer(client), _REASONS.get(reason, reason),
        )

    # --- socketserver hooks -------------------------------------------------------------------
    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as err:
            if err.errno in _ACCEPT_EXHAUSTED:
                self.throttle.warning("accept", "metrics: cannot accept a connection: %s", err)
                time.sleep(ACCEPT_BACKOFF_S)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        sock: socket.socket = request
        if not self._slots.acquire(blocking=False):
            self.refuse("busy", client_address)  # counted before the client can see the 503
            self._turn_away(sock)
            return
        thread = threading.Thread(
            target=self._serve_one, args=(sock, client_address, time.monotonic()),
            name=CONNECTION_THREAD, daemon=True,
        )
        with self._lock:
            self._open[thread] = sock
        try:
            thread.start()
        except RuntimeError:  # the process is out of threads
            with self._lock:
                del self._open[thread]
            self._slots.release()
            self.shutdown_request(sock)
            self.refuse("busy", client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.throttle.log(
            logging.WARNING, "error", "metrics: serving %s failed", _peer(client_address),
            exc_info=True,
        )

    # --- one connection -----------------------------------------------------------------------
    def _serve_one(self, sock: socket.socket, client: Any, accepted_at: float) -> None:
        deadline = accepted_at + self.cfg.read_timeout_s
        me = threading.current_thread()
        conn = sock
        try:
            if self.ssl_context is not None:
                conn = self.ssl_context.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                )
                with self._lock:
                    self._open[me] = conn
                try:
                    _time_left(conn, deadline)
                    conn.do_handshake()
                except OSError as err:  # ssl.SSLError and TimeoutError among them
                    reason = "timeout" if isinstance(err, TimeoutError) else "tls"
                    log.debug("metrics: TLS handshake with %s failed: %s", _peer(client), err)
                    self.refuse(reason, client)
                    return
            _Handler(conn, client, self, deadline)
        except OSError as err:  # the client went away or stalled while taking the answer
            log.debug("metrics: connection from %s ended: %s", _peer(client), err)
        except Exception:
            self.handle_error(conn, client)
        finally:
            self.shutdown_request(conn)
            with self._lock:
                self._open.pop(me, None)
            self._slots.release()

    def _turn_away(self, sock: socket.socket) -> None:
        """Answer 503 without blocking (plain HTTP) and close: no thread for this one."""
        if self.ssl_context is None:
            sock.setblocking(False)
            # Whatever has come already is read, so that closing sends no RST that would
            # discard the 503; nothing here may block the accept thread.
            with contextlib.suppress(OSError):
                sock.recv(MAX_REQUEST_BYTES)
            with contextlib.suppress(OSError):
                sock.send(BUSY_RESPONSE)
        self.shutdown_request(sock)

    def _warn_if_exposed(self) -> None:
        """Log where it serves; a WARNING when that is beyond loopback and unprotected."""
        bound = ipaddress.ip_address(str(self.server_address[0]).split("%")[0])
        client_certs = self.cfg.tls is not None and self.cfg.tls.client_ca_file is not None
        authenticated = self.credentials is not None or client_certs
        if bound.is_loopback or (self.ssl_context is not None and authenticated):
            log.info("metrics on %s", self.url)
            return
        if self.ssl_context is None and not authenticated:
            missing, risk = "TLS/auth", "anyone who can reach the port can read them"
        elif self.ssl_context is None:
            missing, risk = "TLS", "the basic-auth password crosses the network in clear"
        else:
            missing, risk = "auth", "anyone who can reach the port can read them"
        log.warning(
            "metrics exposed on %s:%d without %s: %s; add [metrics.tls] and "
            "username/password_file, or set host = \"127.0.0.1\" (metrics on %s)",
            self.cfg.host, self.port, missing, risk, self.url,
        )


_REASONS = {
    "busy": "max_connections reached",
    "timeout": "no complete request within read_timeout_s",
    "too_large": f"request head over {MAX_REQUEST_BYTES} bytes",
    "tls": "TLS handshake failed",
    "unauthorized": "missing or wrong credentials",
}


def _listen_address(host: str, port: int) -> tuple[socket.AddressFamily, Any]:
    """The address family and socket address to bind ``host``:``port`` to (the first the
    resolver gives). Raises OSError (socket.gaierror) for a name that does not resolve."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _type, _proto, _name, address = infos[0]
    return family, address


def _peer(client: Any) -> str:
    if isinstance(client, tuple) and len(client) >= 2:
        return f"{client[0]}:{client[1]}"
    return str(client)
