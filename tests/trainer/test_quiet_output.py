"""``trainer.quiet``: native (C/C++) output to fds 1/2 hidden, Python's own output kept.

Each case runs in a fresh Python process whose stdout and stderr are real pipes, as a terminal
would be, because what is tested is file-descriptor plumbing: C code writing straight to fd 2
(as absl and the CUDA stub do), C stdio buffering on fd 1 (the TFLite converter's printf),
and Python's prints, logging and tracebacks that must still come through.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 60

PRELUDE = """
import ctypes, logging, os, sys
from trainer.quiet import quiet_native_output
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
libc = ctypes.CDLL(None)
"""


def run_py(body: str) -> subprocess.CompletedProcess[str]:
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def test_native_writes_hidden_python_output_kept() -> None:
    proc = run_py(
        """
        with quiet_native_output():
            os.write(2, b"I0000 native-stderr-noise\\n")
            os.write(1, b"native-stdout-noise\\n")
            # C stdio, as the TFLite converter's printf of its settings
            libc.printf(b"fully_quantize: 0, c-stdio-noise\\n")
            print("python print kept")
            print("python stderr kept", file=sys.stderr)
            logging.getLogger("demo").info("log line kept")
            logging.getLogger("absl").warning("absl python noise")
        print("after the block")
        os.write(2, b"native after the block\\n")
        """
    )
    assert proc.returncode == 0, proc.stderr
    both = proc.stdout + proc.stderr
    for noise in ("native-stderr-noise", "native-stdout-noise", "c-stdio-noise", "absl python"):
        assert noise not in both
    assert proc.stdout.splitlines() == ["python print kept", "after the block"]
    assert "python stderr kept" in proc.stderr
    assert "INFO demo: log line kept" in proc.stderr
    assert "native after the block" in proc.stderr  # fds are restored


def test_unexpected_error_shows_the_hidden_native_output() -> None:
    proc = run_py(
        """
        with quiet_native_output():
            os.write(2, b"converter: unsupported op FancyOp\\n")
            raise RuntimeError("conversion failed")
        """
    )
    assert proc.returncode == 1
    assert "RuntimeError: conversion failed" in proc.stderr
    assert "converter: unsupported op FancyOp" in proc.stderr
    assert proc.stderr.index("FancyOp") < proc.stderr.index("RuntimeError")


def test_exit_and_logging_work_after_the_block() -> None:
    """Handlers made inside the block (TensorFlow's, another CLI's) are pointed back at the
    real stderr, so logging after the block (and at interpreter exit) still works."""
    proc = run_py(
        """
        with quiet_native_output():
            late = logging.StreamHandler(sys.stderr)
            logging.getLogger("late").addHandler(late)
        logging.getLogger("late").warning("late handler still writes")
        sys.exit(3)
        """
    )
    assert proc.returncode == 3
    assert "late handler still writes" in proc.stderr
    assert "Logging error" not in proc.stderr
