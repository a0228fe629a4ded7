"""Shared set-up of the agent benchmarks: a signed int8 bundle trained on simulator history,
and the machine label every result carries."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"


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
