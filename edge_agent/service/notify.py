"""The systemd notify protocol (``sd_notify``), standard library only.

The unit (``systemd/edge-agent.service``) is ``Type=notify`` with ``WatchdogSec=``: systemd
passes the path of a datagram socket in ``$NOTIFY_SOCKET`` and the watchdog period in
``$WATCHDOG_USEC``. The daemon sends newline-separated ``KEY=value`` assignments to that socket:
``READY=1`` once sources, model and outbox are up (after the Numba JIT), ``RELOADING=1`` and
``READY=1`` around a SIGHUP reload, ``STOPPING=1`` when SIGTERM starts the outbox drain, and
``WATCHDOG=1`` regularly while the main loop is healthy.

Sending never raises: a service manager that went away must not take the agent down with it,
so every function returns whether the datagram was handed to the socket. Without
``$NOTIFY_SOCKET`` (a shell, a test, another init system) they return ``False`` and do nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"
USEC_PER_S = 1_000_000
# sd_watchdog_enabled(3) recommends pinging at half the interval: one late ping is survivable.
WATCHDOG_PING_FRACTION = 0.5
# A hung service manager must not hang the agent; the socket is local, so this is generous.
SEND_TIMEOUT_S = 1.0


def _socket_address(raw: str) -> str | None:
    """The AF_UNIX address for ``$NOTIFY_SOCKET``, or None for a kind we do not speak."""
    if raw.startswith("@"):
        # Linux abstract namespace: systemd writes the leading NUL as '@'.
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    # Newer systemd also hands out "vsock:CID:PORT" (for VMs); a gateway never gets one.
    return None


def notify(state: str) -> bool:
    """Send ``state`` (``KEY=value`` lines) to the service manager.

    Returns True when the datagram was sent, False when there is no ``$NOTIFY_SOCKET`` or the
    send failed (logged at debug level: the agent carries on either way).
    """
    raw = os.environ.get(NOTIFY_SOCKET_ENV, "")
    if not raw:
        return False
    address = _socket_address(raw)
    if address is None:
        log.debug("unsupported %s=%r; not notifying", NOTIFY_SOCKET_ENV, raw)
        return False
    try:
        # CLOEXEC so a child process never inherits a channel to the service manager.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT_S)
            sock.connect(address)
            sock.send(state.encode("utf-8"))
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", raw, exc)
        return False
    return True


def _one_line(text: str) -> str:
    # A newline would start a new assignment and could smuggle in e.g. READY=1.
    return " ".join(text.splitlines())


def _with_status(first: str, text: str | None) -> str:
    return first if not text else f"{first}\nSTATUS={_one_line(text)}"


def ready(status: str | None = None) -> bool:
    """Start-up (or a reload) is complete; ``status`` is shown by ``systemctl status``."""
    return notify(_with_status("READY=1", status))


def reloading(status: str | None = None) -> bool:
    """A configuration reload begins; send :func:`ready` when it is done.

    ``MONOTONIC_USEC`` (CLOCK_MONOTONIC, µs) is what systemd 253+ requires to accept the
    message for ``Type=notify-reload``; older versions ignore it.
    """
    now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(_with_status(f"RELOADING=1\nMONOTONIC_USEC={now_us}", status))


def stopping(status: str | None = None) -> bool:
    """Shutdown has begun (the outbox is draining); systemd shows the unit as deactivating."""
    return notify(_with_status("STOPPING=1", status))


def status(text: str) -> bool:
    """A one-line, human-readable state for ``systemctl status`` (newlines become spaces)."""
    return notify(f"STATUS={_one_line(text)}")


def watchdog_ping() -> bool:
    """Tell the watchdog the main loop is alive; send every :func:`watchdog_interval_s`."""
    return notify("WATCHDOG=1")


def extend_timeout(seconds: float) -> bool:
    """Ask for ``seconds`` more before the start (or stop) timeout fires.

    For an unusually slow step, e.g. a first Numba compile on a cold cache on a Pi; the unit's
    ``TimeoutStartSec=`` already allows for the usual case.
    """
    usec = max(0, round(seconds * USEC_PER_S))
    return notify(f"EXTEND_TIMEOUT_USEC={usec}")


def _parse_uint(raw: str) -> int | None:
    # Plain ASCII digits only, as systemd writes them; int() would also take " 5", "+5", "٥".
    return int(raw) if raw.isascii() and raw.isdigit() else None


def watchdog_interval_s() -> float | None:
    """The period at which to call :func:`watchdog_ping`, in seconds, or None when off.

    Reads ``$WATCHDOG_USEC`` (the unit's ``WatchdogSec=``) and returns half of it. When
    ``$WATCHDOG_PID`` is set it names the process the watchdog is meant for; any other process
    (a child that inherited the environment) gets None, like ``sd_watchdog_enabled(3)``.
    """
    raw_usec = os.environ.get(WATCHDOG_USEC_ENV, "")
    if not raw_usec:
        return None
    raw_pid = os.environ.get(WATCHDOG_PID_ENV, "")
    if raw_pid:
        pid = _parse_uint(raw_pid)
        if pid is None:
            log.warning("ignoring watchdog: %s=%r is not a pid", WATCHDOG_PID_ENV, raw_pid)
            return None
        if pid != os.getpid():
            return None
    usec = _parse_uint(raw_usec)
    if usec is None:
        log.warning("ignoring watchdog: %s=%r is not an integer", WATCHDOG_USEC_ENV, raw_usec)
        return None
    if usec == 0:
        return None
    return usec / USEC_PER_S * WATCHDOG_PING_FRACTION
