"""scripts/demo and its sourced helpers (scripts/demo-helpers).

The whole demo takes minutes (training, then DEMO_MINUTES of live run), too slow for a test;
what can go wrong in the shell is tested here instead: both files parse (and pass shellcheck
where it is installed), the demo broker is a real Mosquitto on a free loopback port that
delivers messages and is gone after ``demo_broker_stop``, a missing Mosquitto is one line and
no broker, and ``demo_stop`` ends a process that handles SIGTERM and kills one that ignores it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import LOCALHOST, Subscriber, mosquitto_binary
from paho.mqtt import publish

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scripts" / "demo"
HELPERS = ROOT / "scripts" / "demo-helpers"
SCRIPT_TIMEOUT_S = 30
MESSAGE_TIMEOUT_S = 5.0
NO_BROKER = (
    "mosquitto not installed: events stay in the local store "
    "(apt-get install mosquitto to see them delivered)"
)
TCP_LISTEN = "0A"  # the LISTEN state in /proc/net/tcp

needs_mosquitto = pytest.mark.skipif(
    mosquitto_binary() is None, reason="mosquitto is not installed (apt-get install mosquitto)"
)


def bash(body: str) -> subprocess.CompletedProcess[str]:
    """``body`` run by bash with the helpers sourced, as scripts/demo sources them."""
    script = f"set -euo pipefail\nsource {HELPERS}\n{body}"
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S,
        check=False, env={**os.environ, "PY": sys.executable},
    )


def listeners(port: int) -> list[ipaddress.IPv4Address]:
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == TCP_LISTEN:
            found.append(ipaddress.IPv4Address(bytes.fromhex(addr)[::-1]))
    return found


def process_gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize("path", [DEMO, HELPERS], ids=lambda p: p.name)
def test_syntax(path: Path) -> None:
    subprocess.run(["bash", "-n", str(path)], check=True, timeout=SCRIPT_TIMEOUT_S)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck() -> None:
    result = subprocess.run(
        ["shellcheck", "-x", str(DEMO), str(HELPERS)], capture_output=True, text=True,
        cwd=ROOT, timeout=SCRIPT_TIMEOUT_S, check=False,
    )
    assert result.returncode == 0, result.stdout


@pytest.fixture
def broker_shell(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A bash that has started the demo broker in tmp_path/broker, printed its port and pid,
    and stops it (printing ``stopped``) when a line arrives on its stdin."""
    script = (
        f"set -euo pipefail\nsource {HELPERS}\n"
        f"demo_broker_start {tmp_path}/broker\n"
        'echo "$DEMO_BROKER_PORT $DEMO_BROKER_PID"\n'
        "read -r _\n"
        'demo_broker_stop\necho "stopped [${DEMO_BROKER_PID}]"\n'
    )
    proc = subprocess.Popen(
        ["bash", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PY": sys.executable},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.communicate("stop\n", timeout=SCRIPT_TIMEOUT_S)


@needs_mosquitto
def test_demo_broker_delivers_on_loopback_and_is_gone_after_stop(
    broker_shell: subprocess.Popen[str], tmp_path: Path
) -> None:
    assert broker_shell.stdout is not None
    port_text, pid_text = broker_shell.stdout.readline().split()
    port, pid = int(port_text), int(pid_text)
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "mosquitto"  # not a wrapper's pid
    assert listeners(port) == [ipaddress.IPv4Address(LOCALHOST)]
    conf = (tmp_path / "broker" / "mosquitto.conf").read_text()
    assert f"listener {port} {LOCALHOST}\n" in conf
    assert "persistence false\n" in conf
    with Subscriber(port, "edge/demo/#") as sub:
        publish.single("edge/demo/events", b'{"kind": "anomaly"}', qos=1,
                       hostname=LOCALHOST, port=port)
        got = sub.wait_for(1, MESSAGE_TIMEOUT_S)
    assert got[0].topic == "edge/demo/events"
    assert got[0].json() == {"kind": "anomaly"}

    out, err = broker_shell.communicate("stop\n", timeout=SCRIPT_TIMEOUT_S)
    assert broker_shell.returncode == 0, err
    assert out.strip() == "stopped []"
    assert process_gone(pid)
    assert listeners(port) == []
    assert "mosquitto version" in (tmp_path / "broker" / "mosquitto.log").read_text()


def test_without_mosquitto_one_line_and_no_broker(tmp_path: Path) -> None:
    # A stand-in for a machine without the package: the lookup finds nothing.
    result = bash(
        "demo_mosquitto_binary() { return 1; }\n"
        f"if demo_broker_start {tmp_path}/broker; then echo started; fi\n"
        'echo "port=[$DEMO_BROKER_PORT] pid=[$DEMO_BROKER_PID]"\n'
        "demo_broker_stop\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [NO_BROKER, "port=[] pid=[]"]
    assert not (tmp_path / "broker").exists()


def test_stop_ends_a_process_that_handles_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"  # written once the SIGTERM handler is in place
    result = bash(
        f"{sys.executable} -c 'import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n"
        f"pathlib.Path(\"{ready}\").touch()\n"
        "time.sleep(60)' &\n"
        "pid=$!\n"
        f'demo_wait_ready 10 "$pid" test -e {ready}\n'
        "start=$SECONDS\n"
        'rc=0; demo_stop "$pid" 10 || rc=$?\n'
        'echo "rc=$rc took=$((SECONDS - start)) alive=$(demo_alive "$pid" && echo y || echo n)"\n'
    )
    assert result.returncode == 0, result.stderr
    rc, took, alive = re.findall(r"rc=(\d+) took=(\d+) alive=(\w)", result.stdout)[0]
    assert (rc, alive) == ("7", "n")
    assert int(took) <= 1


def test_stop_kills_a_process_that_ignores_sigterm() -> None:
    result = bash(
        "( trap '' TERM; exec sleep 60 ) &\n"
        "pid=$!\n"
        "sleep 0.2\n"
        'rc=0; demo_stop "$pid" 1 || rc=$?\n'
        'echo "rc=$rc alive=$(demo_alive "$pid" && echo y || echo n)"\n'
    )
    assert result.returncode == 0, result.stderr
    assert "rc=137 alive=n" in result.stdout  # 128 + SIGKILL
    assert "did not stop within 1 s of SIGTERM: killed" in result.stderr


def test_alive_only_while_the_process_runs() -> None:
    result = bash(
        "sleep 60 &\nrunning=$!\n"
        "true &\nexited=$!\n"
        "sleep 0.5\n"
        'demo_alive "$running" && echo "running=alive"\n'
        'demo_alive "$exited" || echo "exited=not-alive"\n'
        'demo_alive "" || echo "empty=not-alive"\n'
        'demo_stop "$running" 5 || true\n'
        'demo_alive "$running" || echo "stopped=not-alive"\n'
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "running=alive", "exited=not-alive", "empty=not-alive", "stopped=not-alive"
    ]


def test_wait_ready_reports_ready_exited_and_timeout() -> None:
    result = bash(
        "sleep 60 &\nlong=$!\n"
        "true &\nshort=$!\n"
        "sleep 0.3\n"
        'rc=0; demo_wait_ready 5 "$long" true || rc=$?; echo "ready=$rc"\n'
        'rc=0; demo_wait_ready 5 "$short" false || rc=$?; echo "exited=$rc"\n'
        'rc=0; demo_wait_ready 1 "$long" false || rc=$?; echo "timeout=$rc"\n'
        'demo_stop "$long" 5 || true\n'
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ready=0", "exited=2", "timeout=1"]


@pytest.mark.parametrize(("ago_s", "shown"), [
    ("4.25", r"4\.[23] s"), ("75", r"1 min 1[56] s"), ("3605", r"60 min 0[56] s"),
])
def test_elapsed_reads_as_seconds_or_minutes(ago_s: str, shown: str) -> None:
    result = bash(
        f'start=$(awk -v now="${{EPOCHREALTIME/,/.}}" '
        f"'BEGIN {{ printf \"%.6f\", now - {ago_s} }}')\n"
        'demo_elapsed "$start"\n'
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(shown, result.stdout), result.stdout
