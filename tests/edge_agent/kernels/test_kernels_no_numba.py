"""The gateway's case: the agent and ``replay`` in a process where ``import numba`` fails run
on the compiled module, with the JIT's results; with neither, a clear error."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.edge_agent.agent.agent_support import replay_source, write_config

ROOT = Path(__file__).resolve().parents[3]
RUN_TIMEOUT_S = 300
NOTIFY_POLL_S = 0.2
PROBE = """
import sys
from edge_agent.cli import main
code = main(sys.argv[1:])
import edge_agent.kernels as k
print("BACKEND", k.backend().kind, "numba" in sys.modules)
sys.exit(code)
"""


def _replay(bundle: Path, keys: Path, data: Path, out: Path, env: dict[str, str]) -> str:
    args = ["replay", "--bundle", str(bundle), "--data", str(data), "--out", str(out),
            "--trust", str(keys / "signing.pub")]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc.stdout


def _env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_KERNELS")}
    return {**base, **extra}


def test_replay_without_numba_matches_the_jit(
    bundle: Path, keys: Path, sim_csv: Path, tmp_path: Path, aot_dir: Path, no_numba: Path
) -> None:
    device = _env(PYTHONPATH=f"{no_numba}:{ROOT}", EDGE_KERNELS_DIR=str(aot_dir))
    said = _replay(bundle, keys, sim_csv, tmp_path / "aot.csv", device)
    assert "BACKEND aot False" in said
    desk = _env(PYTHONPATH=str(ROOT), EDGE_KERNELS="jit")
    assert "BACKEND jit True" in _replay(bundle, keys, sim_csv, tmp_path / "jit.csv", desk)
    assert (tmp_path / "aot.csv").read_bytes() == (tmp_path / "jit.csv").read_bytes()


class _Agent:
    """``python -m edge_agent run`` as systemd starts it, in a process without Numba."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.sock_path = config.parent / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        self.sock.settimeout(NOTIFY_POLL_S)
        self.log_path = config.parent / "agent.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
                env={**env, "NOTIFY_SOCKET": str(self.sock_path)},
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def ready(self) -> bool:
        """True at READY=1, False if the process exits first."""
        while self.proc.poll() is None:
            try:
                if "READY=1" in self.sock.recv(4096).decode():
                    return True
            except TimeoutError:
                continue
        return False

    def close(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(RUN_TIMEOUT_S)
        self.sock.close()
        return self.log_path.read_text(errors="replace")


def test_agent_without_numba_runs_on_the_compiled_module(
    bundle: Path, keys: Path, sim_csv: Path, tmp_path: Path, aot_dir: Path, no_numba: Path
) -> None:
    config = write_config(
        tmp_path / "agent.toml", bundle=bundle, keys=keys, sources=replay_source(sim_csv)
    )
    env = _env(PYTHONPATH=f"{no_numba}:{ROOT}", EDGE_KERNELS_DIR=str(aot_dir))
    agent = _Agent(config, env)
    try:
        assert agent.ready(), agent.close()
    finally:
        log = agent.close()
    assert "Traceback" not in log, log


def test_without_module_or_numba_the_agent_says_what_to_build(
    bundle: Path, keys: Path, sim_csv: Path, tmp_path: Path, no_numba: Path
) -> None:
    config = write_config(
        tmp_path / "agent.toml", bundle=bundle, keys=keys, sources=replay_source(sim_csv)
    )
    empty = tmp_path / "no-kernels"
    empty.mkdir()
    env = _env(PYTHONPATH=f"{no_numba}:{ROOT}", EDGE_KERNELS_DIR=str(empty))
    agent = _Agent(config, env)
    try:
        assert not agent.ready()
    finally:
        log = agent.close()
    assert agent.proc.returncode != 0
    assert "scripts/build-kernels" in log, log
    assert "numba is not installed" in log, log
