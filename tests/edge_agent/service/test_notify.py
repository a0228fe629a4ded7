"""The sd_notify client against a real AF_UNIX datagram socket, as systemd would bind it."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.service import notify as sd

RECV_TIMEOUT_S = 2.0
MAX_DATAGRAM = 4096


class Manager:
    """The service manager's end: a bound datagram socket and what arrived on it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self) -> str:
        return self.sock.recv(MAX_DATAGRAM).decode("utf-8")

    def assert_empty(self) -> None:
        self.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            self.sock.recv(MAX_DATAGRAM)


def _bound(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(RECV_TIMEOUT_S)
    return sock


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    # A short name: AF_UNIX paths are limited to 107 bytes and tmp_path is long already.
    path = tmp_path / "n.sock"
    with _bound(str(path)) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield Manager(sock)


@pytest.fixture
def abstract_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    name = f"edge-agent-test-{uuid.uuid4().hex}"
    with _bound("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield Manager(sock)


def test_ready_sends_exact_datagram(manager: Manager) -> None:
    assert sd.ready() is True
    assert manager.recv() == "READY=1"


def test_ready_with_status(manager: Manager) -> None:
    assert sd.ready("scoring 6 channels") is True
    assert manager.recv() == "READY=1\nSTATUS=scoring 6 channels"


def test_each_helper_sends_one_datagram(manager: Manager) -> None:
    assert sd.stopping()
    assert sd.status("draining outbox: 12 events")
    assert sd.watchdog_ping()
    assert sd.extend_timeout(90)
    assert sd.notify("ERRNO=5")
    assert [manager.recv() for _ in range(5)] == [
        "STOPPING=1",
        "STATUS=draining outbox: 12 events",
        "WATCHDOG=1",
        "EXTEND_TIMEOUT_USEC=90000000",
        "ERRNO=5",
    ]
    manager.assert_empty()


def test_status_cannot_inject_assignments(manager: Manager) -> None:
    # Text from a config or an exception must not be able to send READY=1 on its own.
    assert sd.status("bad config\nREADY=1")
    assert manager.recv() == "STATUS=bad config READY=1"


def test_reloading_carries_monotonic_usec(manager: Manager) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sd.reloading("reloading /etc/edge-agent/agent.toml")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = manager.recv().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert value.isdigit()
    assert before <= int(value) <= after
    assert lines[2:] == ["STATUS=reloading /etc/edge-agent/agent.toml"]


def test_abstract_socket(abstract_manager: Manager) -> None:
    assert sd.ready("up")
    assert abstract_manager.recv() == "READY=1\nSTATUS=up"
    assert sd.watchdog_ping()
    assert abstract_manager.recv() == "WATCHDOG=1"


def test_unset_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd.notify("READY=1") is False
    assert sd.ready() is False
    assert sd.watchdog_ping() is False


def test_empty_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sd.ready() is False


def test_missing_socket_returns_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The manager went away: the agent must carry on, not raise.
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert sd.ready() is False


def test_unsupported_socket_kind_returns_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sd.ready() is False


@pytest.fixture
def no_watchdog_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    return monkeypatch


def test_watchdog_off_without_env(no_watchdog_env: pytest.MonkeyPatch) -> None:
    assert sd.watchdog_interval_s() is None


def test_watchdog_interval_is_half_of_watchdog_usec(no_watchdog_env: pytest.MonkeyPatch) -> None:
    no_watchdog_env.setenv("WATCHDOG_USEC", "30000000")  # WatchdogSec=30
    assert sd.watchdog_interval_s() == pytest.approx(15.0)


def test_watchdog_for_our_pid(no_watchdog_env: pytest.MonkeyPatch) -> None:
    no_watchdog_env.setenv("WATCHDOG_USEC", "3000000")
    no_watchdog_env.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sd.watchdog_interval_s() == pytest.approx(1.5)


def test_watchdog_meant_for_another_pid(no_watchdog_env: pytest.MonkeyPatch) -> None:
    no_watchdog_env.setenv("WATCHDOG_USEC", "3000000")
    no_watchdog_env.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sd.watchdog_interval_s() is None


@pytest.mark.parametrize("usec", ["0", "-5", "abc", " 30", "1.5", "+30"])
def test_watchdog_invalid_usec(no_watchdog_env: pytest.MonkeyPatch, usec: str) -> None:
    no_watchdog_env.setenv("WATCHDOG_USEC", usec)
    assert sd.watchdog_interval_s() is None


def test_watchdog_invalid_pid(no_watchdog_env: pytest.MonkeyPatch) -> None:
    no_watchdog_env.setenv("WATCHDOG_USEC", "3000000")
    no_watchdog_env.setenv("WATCHDOG_PID", "init")
    assert sd.watchdog_interval_s() is None
