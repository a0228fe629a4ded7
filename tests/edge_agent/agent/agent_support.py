"""Helpers for the daemon tests: write a config, run ``python -m edge_agent run`` as systemd
would (a subprocess with a notify socket), and read what it stored."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def write_config(
    path: Path,
    *,
    bundle: Path,
    keys: Path,
    sources: str,
    mqtt_port: int | None = None,
    extra: str = "",
    machine_id: str = "test-machine",
) -> Path:
    text = f"""
machine_id = "{machine_id}"
state_dir = "{path.parent / 'state'}"
{extra}
[model]
bundle = "{bundle}"
trust_key = "{keys / 'signing.pub'}"

{sources}

[metrics]
port = 0
"""
    if mqtt_port is not None:
        text += (
            f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\nheartbeat_s = 1\n'
            "backoff_initial_s = 0.2\nbackoff_max_s = 1\n"
        )
    path.write_text(text)
    return path


def replay_source(csv: Path, *, speed: float = 0.0, loop: bool = False) -> str:
    return (
        f'[[sources]]\ntype = "replay"\npath = "{csv}"\nspeed = {speed}\n'
        f"loop = {'true' if loop else 'false'}\n"
    )


class AgentProcess:
    """The daemon in a subprocess, with a notify socket to see READY, WATCHDOG and STOPPING."""

    def __init__(self, config: Path, *args: str, watchdog_usec: int | None = None) -> None:
        self.sock_path = config.parent / f"notify-{time.monotonic_ns()}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        self.sock.settimeout(0.2)
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(self.sock_path),
            "PYTHONPATH": str(ROOT),
            "JOURNAL_STREAM": "8:1234",  # as under systemd: journald-style log lines
        }
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        self.log_path = config.parent / "agent.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config), *args],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.messages: list[str] = []

    def read_notify(self, until: str | None = None, timeout: float = 60.0) -> list[str]:
        """Collect notify datagrams until one contains ``until`` (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                if self.proc.poll() is not None and until is not None:
                    break
                continue
            if until is not None and until in self.messages[-1]:
                return self.messages
        if until is not None:
            raise AssertionError(f"no {until!r} from the agent; log:\n{self.log()}")
        return self.messages

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        self.sock.close()
        self.sock_path.unlink(missing_ok=True)
