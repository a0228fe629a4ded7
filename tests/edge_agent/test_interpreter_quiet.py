"""The gateway's commands print no TensorFlow Lite start-up noise unless --verbose.

LiteRT writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." from C++ straight to
file descriptor 2 at the first allocation; only ``edge_agent -v`` shows it. Real subprocesses,
the real int8 bundle.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOISE = "XNNPACK delegate"


def _replay(bundle: Path, keys: Path, data: Path, out: Path, *flags: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "edge_agent", *flags, "replay", "--bundle", str(bundle),
         "--trust", str(keys / "signing.pub"), "--data", str(data), "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_replay_is_quiet_unless_verbose(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path
) -> None:
    quiet = _replay(bundle, keys, sim_csv, tmp_path / "a.csv")
    assert "scored" in quiet
    assert NOISE not in quiet
    loud = _replay(bundle, keys, sim_csv, tmp_path / "b.csv", "--verbose")
    assert NOISE in loud
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
