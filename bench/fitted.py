"""One model per SKAB file and per simulator seed pair, fitted and exported int8: the set-up
the benches that replay a detector's decisions share (``alert_deadband.py``,
``screen_headroom.py``)."""

from __future__ import annotations

import argparse
import multiprocessing as mp
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class Fitted:
    """One model, fitted and exported, and the table it is to be scored on."""

    name: str  # "valve1_0", "sim_21_22"
    record: Any  # the fit's trainer.run_record.RunRecord
    bundle: Path  # signed int8, with work/keys
    table: Any  # the rows to score (SensorTable)
    y: np.ndarray  # their anomaly labels
    first: int  # rows before this one are history, not scored


def add_fit_args(ap: argparse.ArgumentParser, out: Path) -> None:
    """The options every such bench takes: which SKAB files, the simulator's sizes, jobs."""
    ap.add_argument("--skab-limit", type=int, help="only files numbered below N in each group")
    ap.add_argument("--sim-history", type=int, default=172_800, help="simulated training rows")
    ap.add_argument("--sim-live", type=int, default=40_000, help="simulated scored rows")
    ap.add_argument("--sim-epochs", type=int, help="autoencoder epochs (default: built-in)")
    ap.add_argument("--jobs", type=int, default=2, help="SKAB files fitted side by side")
    ap.add_argument("--out", type=Path, default=out, help=f"JSON to write (default: {out})")


def parsed(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    a = ap.parse_args(argv)
    if a.jobs < 1 or a.sim_history < 1 or a.sim_live < 1:
        ap.error("--jobs, --sim-history and --sim-live must be at least 1")
    if a.skab_limit is not None and a.skab_limit < 1:
        ap.error("--skab-limit must be at least 1 (file 0 of each group is the first)")
    return a


def over_skab(
    worker: Callable[[tuple[Path, Path]], T], work: Path, a: argparse.Namespace
) -> list[T]:
    """``worker((file, work))`` for each SKAB file ``a`` selects, with a signing key pair made
    in ``work/keys`` first; side by side in ``a.jobs`` processes."""
    from bench.skab import skab_files
    from export.keys import keygen

    keygen(work / "keys")
    files = [f for f in skab_files() if a.skab_limit is None or int(f.stem) < a.skab_limit]
    args = [(f, work) for f in files]
    if a.jobs > 1:
        with mp.get_context("spawn").Pool(a.jobs, maxtasksperchild=4) as pool:
            return pool.map(worker, args, chunksize=1)
    # In this process (a bench loaded by path, as the smoke tests do, included).
    return [worker(x) for x in args]


def skab_bundle(path: Path, work: Path, cfg: Any) -> Fitted:
    """Fit ``cfg`` on rows [0, 400) of a SKAB file without labels and export int8 (signed
    with ``work/keys``); the whole file is scored from row 400 on."""
    from bench.common import bundle_past_the_gate
    from bench.skab import TRAIN_ROWS, unlabelled
    from edge_agent.data.table import read_table
    from trainer.fit import fit

    tag = f"{path.parent.name}_{path.stem}"
    table = read_table(path, label_cols=["anomaly"])
    record = fit(unlabelled(table.slice(0, TRAIN_ROWS)), work / f"run_{tag}", cfg, seed=0)
    bundle = work / f"bundle_{tag}"
    bundle_past_the_gate(work / f"run_{tag}", bundle, work / "keys" / "signing.key")
    return Fitted(tag, record, bundle, table, table.labels["anomaly"].astype(bool), TRAIN_ROWS)


def simulator_bundle(
    work: Path,
    seeds: tuple[int, int],
    a: argparse.Namespace,
    cfg: Any,
    *,
    history_rows: int | None = None,
) -> Fitted:
    """Fit ``cfg`` on a simulated history (``history_rows``, default ``a.sim_history``;
    ``a.sim_epochs``), export int8; scored on a fresh stretch (``a.sim_live`` rows) of another
    seed. The name is ``sim_<seeds>``, with ``_h<rows>`` when ``history_rows`` is given."""
    from bench.common import bundle_past_the_gate
    from edge_agent.data.table import read_table
    from edge_agent.simulator import simulate_plant
    from trainer.fit import fit

    tag = f"sim_{seeds[0]}_{seeds[1]}" + (f"_h{history_rows}" if history_rows else "")
    hist = simulate_plant(rows=history_rows or a.sim_history, seed=seeds[0])
    live = simulate_plant(rows=a.sim_live, seed=seeds[1])
    hist.write_csv(work / f"{tag}_history.csv")
    live.write_csv(work / f"{tag}_live.csv")
    if a.sim_epochs:
        cfg.autoencoder.epochs = a.sim_epochs
    history = read_table(work / f"{tag}_history.csv", label_cols=["anomaly"])
    record = fit(history, work / f"run_{tag}", cfg, seed=0)
    bundle = work / f"bundle_{tag}"
    bundle_past_the_gate(work / f"run_{tag}", bundle, work / "keys" / "signing.key")
    table = read_table(work / f"{tag}_live.csv", label_cols=["anomaly"])
    return Fitted(tag, record, bundle, table, live.labels.astype(bool), 0)
