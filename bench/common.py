"""Shared set-up of the agent benchmarks: a signed int8 bundle trained on simulator history,
and the machine label every result carries."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"


# What trains and scores the models: a fresh install of other versions moves the figures a
# little (README, SKAB), so results name them.
STACK = ("tensorflow", "keras", "numpy", "numba", "scikit-learn", "ai-edge-litert")


def packages() -> dict[str, str | None]:
    """Installed version of each package in :data:`STACK` (None: not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in STACK:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def number_list(text: str) -> list[float]:
    """``6,24,48`` -> [6.0, 24.0, 48.0], each above 0 (argparse names the option when it fails)."""
    out = [float(x) for x in text.split(",") if x.strip()]
    if not out or min(out) <= 0:
        raise ValueError(text)
    return out


def int_list(text: str) -> list[int]:
    """``21,31`` -> [21, 31]: seeds, row counts (argparse names the option when it fails)."""
    out = [int(x) for x in text.split(",") if x.strip()]
    if not out:
        raise ValueError(text)
    return out


def write_report(out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write a bench's JSON result (creating its folder) with the installed versions of the
    model stack beside its ``machine``, print it, and return it."""
    report.setdefault("packages", packages())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


def make_bundle(
    work: Path, *, history_rows: int = 20_000, epochs: int | None = None, seed: int = 21
) -> tuple[Path, Path]:
    """Simulate history, ``trainer fit``, sign an int8 bundle; returns (bundle, public key)."""
    from edge_agent.data.table import read_table
    from edge_agent.simulator import simulate_plant
    from export.bundle import build_bundle
    from export.keys import keygen
    from trainer.config import load_config
    from trainer.fit import fit

    work.mkdir(parents=True, exist_ok=True)
    simulate_plant(rows=history_rows, seed=seed).write_csv(work / "history.csv")
    cfg = load_config(None)
    if epochs:
        cfg.autoencoder.epochs = epochs
    table = read_table(work / "history.csv", label_cols=["anomaly"])
    fit(table, work / "run", cfg, seed=0)
    keygen(work / "keys")
    build_bundle(work / "run", work / "bundle", work / "keys" / "signing.key", variants=())
    return work / "bundle", work / "keys" / "signing.pub"


def bundle_past_the_gate(run: Path, out: Path, key: Path) -> str | None:
    """``export bundle`` of a trainer run (no variants). A bundle the int8 parity gate refuses
    is exported anyway (``--force``), so the bench can still score it; returns the refusal's
    first line, or None when the gate passed."""
    from export.bundle import build_bundle
    from export.errors import ExportError

    try:
        build_bundle(run, out, key, variants=())
    except ExportError as exc:
        if "parity gate" not in str(exc):
            raise
        build_bundle(run, out, key, variants=(), force=True, overwrite=True)
        return str(exc).splitlines()[0]
    return None


def screen_recall_kept(cascade: Any, alone: Any, y: Any) -> tuple[int, int]:
    """Stage 2's anomalous windows (a window is anomalous when any of its rows is labelled):
    how many it alerts on when it sees every window (``alone``, ``run_pipeline(...,
    screen=False)``), and how many of those the cascade still alerts on. Their ratio is the
    share of stage 2's recall the screen keeps."""
    import numpy as np

    win_y = np.zeros(cascade.windows.stage.size, bool)
    rows = cascade.window_of_row >= 0
    np.logical_or.at(win_y, cascade.window_of_row[rows], np.asarray(y, bool)[rows])
    s2 = alone.windows.raw_alert & win_y
    return int(s2.sum()), int((cascade.windows.raw_alert & s2).sum())


def start_broker(work: Path) -> tuple[subprocess.Popen[bytes] | None, int | None]:
    """A local ``mosquitto`` on a free port, or (None, None) when it is not installed."""
    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if exe is None:
        return None, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    return proc, port


def add_bundle_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--bundle", type=Path, help="use this bundle (with --trust) instead of training"
    )
    ap.add_argument("--trust", type=Path, help="public key the --bundle is signed with")


def bundle_from_args(a: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """The ``--bundle``/``--trust`` pair, or a bundle trained for the bench (20k rows, 5 epochs)."""
    if a.bundle:
        if a.trust is None:
            raise SystemExit("--bundle needs --trust")
        return Path(a.bundle), Path(a.trust)
    return make_bundle(work / "model", history_rows=20_000, epochs=5)
