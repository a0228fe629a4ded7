"""Virtual serial cables for ``edge_agent simulate``: a ``socat`` pseudo-terminal pair.

Part of the simulator: an RS-485 bus or a sensor's serial line is played by two linked ptys.
The agent opens the configured ``port`` path; the simulator opens ``<port>.sim``. socat is
stopped, and both links removed, when the simulator ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from edge_agent.errors import ConfigError

SIM_SUFFIX = ".sim"
START_TIMEOUT_S = 5.0  # socat creates its links within milliseconds; this is a generous cap
STOP_TIMEOUT_S = 2.0
POLL_INTERVAL_S = 0.02


class PtyPair:
    """A running ``socat`` joining ``port`` (the agent's end) and ``port.sim`` (ours)."""

    def __init__(self, port: str, *, source_index: int, source_name: str) -> None:
        self.port = Path(port)
        self.sim_port = Path(port + SIM_SUFFIX)
        self._where = f"sources.{source_index}.port"
        self._name = source_name
        self._proc: subprocess.Popen[bytes] | None = None

    def _hint(self) -> str:
        return f"choose another path with --set {self._where}=/tmp/edge-sim-{self._name}"

    def _check(self) -> str:
        socat = shutil.which("socat")
        if socat is None:
            raise ConfigError(
                f"{self._where}: simulating serial port {str(self.port)!r} needs socat, which "
                "is not installed (apt-get install socat)"
            )
        folder = self.port.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(
                f"{self._where}: cannot create the simulated serial port {str(self.port)!r}: "
                f"directory {str(folder)!r} is missing or not writable; {self._hint()}"
            )
        for path in (self.port, self.sim_port):
            if path.is_symlink() and not path.exists():
                path.unlink()  # left by a simulator that was killed
            elif path.exists() or path.is_symlink():
                raise ConfigError(
                    f"{self._where}: {str(path)!r} already exists (a real port, or another "
                    f"simulator running); {self._hint()}"
                )
        return socat

    def start(self) -> None:
        socat = self._check()
        # socat's diagnostics go to a file, not a pipe nobody reads that could fill and block it.
        with tempfile.TemporaryFile() as log:
            self._proc = subprocess.Popen(
                [
                    socat,
                    "-d",
                    "-d",
                    f"pty,raw,echo=0,link={self.port}",
                    f"pty,raw,echo=0,link={self.sim_port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            deadline = time.monotonic() + START_TIMEOUT_S
            while not (self.port.exists() and self.sim_port.exists()):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log.seek(0)
                    lines = log.read().decode(errors="replace").strip().splitlines()
                    raise ConfigError(
                        f"{self._where}: socat could not create {str(self.port)!r} "
                        f"({lines[-1] if lines else 'no message'}); {self._hint()}"
                    )
                time.sleep(POLL_INTERVAL_S)

    def stop(self) -> None:
        """Stop socat and remove the links (socat removes them itself on SIGTERM)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for path in (self.port, self.sim_port):
            if path.is_symlink():
                path.unlink(missing_ok=True)
