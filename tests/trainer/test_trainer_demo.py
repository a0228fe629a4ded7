"""``trainer demo`` and the desk CLIs' terminal output, run for real in subprocesses.

The demo's whole path (simulate → fit → keygen/bundle → replay → table) runs once, small, the
way a user starts it; its output must show each step with its time and the replay table, and
none of TensorFlow's, CUDA's, absl's or LiteRT's start-up noise. ``--verbose`` must bring that
noise back, which also proves the markers searched for are what this machine's stack prints.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.simulator import FAULT_KINDS

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 120
# Small enough for seconds, large enough that fit has normal windows to hold out and the live
# stretch has several fault episodes.
TINY_DEMO = ["--history-rows", "3000", "--live-rows", "2000", "--epochs", "2"]
# What TensorFlow 2.21, its CUDA stub, absl and LiteRT print on a CPU-only machine.
NOISE_MARKERS = (
    "oneDNN custom operations",
    "cudart_stub",
    "Could not find cuda drivers",
    "absl::InitializeLog",
    "cuInit",
    "trackable_obj",
    "fully_quantize",
    "XNNPACK delegate",
)
# absl's C++ log line prefix: I0000 00:00:1796410960.254948    4310 port.cc:153]
ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\]", re.MULTILINE)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    # The user's environment, not the test session's TF_CPP_MIN_LOG_LEVEL (conftest sets it).
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def noise_in(text: str) -> list[str]:
    found = [m for m in NOISE_MARKERS if m in text]
    found += ABSL_LINE.findall(text)
    return found


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("demo")
    return out, run_cli("trainer", "demo", "--out", str(out), *TINY_DEMO)


def test_demo_prints_steps_and_table_without_noise(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, proc = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert noise_in(proc.stdout + proc.stderr) == []
    # Only the demo's own lines: the stages' INFO logging would interleave with its steps.
    assert "INFO " not in proc.stderr, proc.stderr[-2000:]
    for step in (
        r"1/4 simulated 3000 rows of history and 2000 live rows in \d+\.\d s",
        r"2/4 trained forest \+ autoencoder in \d+\.\d s",
        r"3/4 signed int8 bundle in \d+\.\d s",
        r"4/4 replayed the live rows through the device pipeline in \d+\.\d s",
        r"demo model ready in \d+\.\d s",
    ):
        assert re.search(step, proc.stdout), step
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_kind"], "the tiny live stretch has fault episodes"
    for kind, row in summary["per_kind"].items():
        assert kind in FAULT_KINDS
        assert 0 <= row["detected"] <= row["injected"]
        assert 0.0 <= row["point_recall"] <= 1.0
        assert re.search(rf"^{kind}\s+{row['injected']}\s+{row['detected']}\s", proc.stdout, re.M)
    assert f"F1 {summary['point_f1']:.3f}" in proc.stdout
    # The training settings used are on disk, with --epochs applied.
    assert "epochs = 2" in (out / "train.toml").read_text()


def test_export_bundle_is_quiet_and_verbose_shows_the_noise(
    demo: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    out, proc = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    args = ["--run", str(out / "run"), "--key", str(out / "keys" / "signing.key")]
    quiet = run_cli("export", "bundle", *args, "--out", str(tmp_path / "q"), "--variants", "none")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert noise_in(quiet.stdout + quiet.stderr) == []
    assert "parity on" in quiet.stdout
    assert "INFO export.bundle: int8 model" in quiet.stderr  # our own logging still shows

    loud = run_cli(
        "export", "--verbose", "bundle", *args, "--out", str(tmp_path / "v"), "--variants", "none"
    )
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert len(noise_in(loud.stdout + loud.stderr)) >= 2


def test_trainer_verbose_shows_the_noise_and_errors_stay_visible(
    demo: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    out, _ = demo
    fit = ["fit", "--data", str(out / "history.csv"), "--label-col", "anomaly"]
    fit += ["--config", str(out / "train.toml"), "--rows", "1500"]
    loud = run_cli("trainer", "--verbose", *fit, "--out", str(tmp_path / "run"))
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert noise_in(loud.stdout + loud.stderr) != []

    # An input error in quiet mode still reaches the user, named.
    bad = run_cli("trainer", *fit, "--out", str(out / "run"))  # exists, no --overwrite
    assert bad.returncode == 2
    assert f"error: {out / 'run'} exists and is not empty" in bad.stderr
