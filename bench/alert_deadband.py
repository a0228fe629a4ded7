"""Alert hysteresis grid on SKAB and the simulator: how the deadband and close were chosen.

Each model is fitted and exported once (int8, signed) and every window is scored by stage 2
(the screen off, so every window has an error); then the hysteresis, the project's own
``AlertState``, is replayed over a grid of ``hold_ratio`` (the deadband: an open alert holds
while a window's error reaches this share of the threshold) and ``close_after`` with
``open_after`` at its default. A row counts as flagged when in alert or with a sensor fault, as
in ``bench/skab.py`` and ``bench/simulator.py``. Reported per data set: pooled point-wise F1 and
FAR (SKAB: rows [400, end) of all 34 files; simulator: the scored stretch), and the number of
alert openings (an alert that closes inside a fault and opens again counts twice).

    python bench/alert_deadband.py                  # -> bench/results/alert_deadband.json
    python bench/alert_deadband.py --skab-limit 1 --sim-history 8000 --sim-live 6000 \
        --sim-epochs 5 --out X                      # smoke run
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, write_report  # noqa: E402

HOLD_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
CLOSE_AFTER = (3, 5, 8, 10, 15)
SIM_SEEDS = ((21, 22), (31, 32))


@dataclass(frozen=True)
class Scored:
    """One model's windows as stage 2 scored them, and the rows they stand for."""

    name: str
    y: np.ndarray  # labels of the scored rows
    row_window: np.ndarray  # per scored row, its window (-1: none)
    error: np.ndarray  # per window, stage 2's error
    threshold: float  # the int8 bundle's alert threshold
    sensor_fault: np.ndarray  # per scored row: a channel past a learned limit


def _score(name: str, bundle: Path, pub: Path, table: Any, y: np.ndarray, first: int) -> Scored:
    from edge_agent.bundle.verify import verify_bundle
    from edge_agent.model_slot import load_cascade
    from edge_agent.pipeline import run_pipeline

    verified = verify_bundle(bundle, pub)
    cascade = load_cascade(verified)
    res = run_pipeline(table, verified.manifest, cascade, screen=False)
    return Scored(
        name, y[first:], res.window_of_row[first:], res.windows.error,
        cascade.threshold.alert_threshold, res.sensor_fault[first:],
    )  # fmt: skip


def skab_bundle(path: Path, work: Path, cfg: Any) -> tuple[Path, Any, np.ndarray]:
    """Fit ``cfg`` on rows [0, 400) of a SKAB file without labels and export int8 (signed
    with ``work/keys``); returns the bundle, the file's table and its anomaly labels."""
    from bench.common import bundle_past_the_gate
    from bench.skab import TRAIN_ROWS, unlabelled
    from edge_agent.data.table import read_table
    from trainer.fit import fit

    tag = f"{path.parent.name}_{path.stem}"
    table = read_table(path, label_cols=["anomaly"])
    fit(unlabelled(table.slice(0, TRAIN_ROWS)), work / f"run_{tag}", cfg, seed=0)
    bundle = work / f"bundle_{tag}"
    bundle_past_the_gate(work / f"run_{tag}", bundle, work / "keys" / "signing.key")
    return bundle, table, table.labels["anomaly"].astype(bool)


def simulator_bundle(
    work: Path, seeds: tuple[int, int], a: argparse.Namespace, cfg: Any
) -> tuple[Path, Any, np.ndarray]:
    """Fit ``cfg`` on a simulated history (``a.sim_history`` rows, ``a.sim_epochs``), export
    int8; returns the bundle, a fresh stretch of another seed and its labels."""
    from bench.common import bundle_past_the_gate
    from edge_agent.data.table import read_table
    from edge_agent.simulator import simulate_plant
    from trainer.fit import fit

    tag = f"sim_{seeds[0]}_{seeds[1]}"
    hist = simulate_plant(rows=a.sim_history, seed=seeds[0])
    live = simulate_plant(rows=a.sim_live, seed=seeds[1])
    hist.write_csv(work / f"{tag}_history.csv")
    live.write_csv(work / f"{tag}_live.csv")
    if a.sim_epochs:
        cfg.autoencoder.epochs = a.sim_epochs
    history = read_table(work / f"{tag}_history.csv", label_cols=["anomaly"])
    fit(history, work / f"run_{tag}", cfg, seed=0)
    bundle = work / f"bundle_{tag}"
    bundle_past_the_gate(work / f"run_{tag}", bundle, work / "keys" / "signing.key")
    table = read_table(work / f"{tag}_live.csv", label_cols=["anomaly"])
    return bundle, table, live.labels.astype(bool)


def skab_file(args: tuple[Path, Path]) -> Scored:
    """Fit on rows [0, 400) without labels, export int8, score every window."""
    from bench.skab import TRAIN_ROWS
    from trainer.config import load_config

    path, work = args
    bundle, table, y = skab_bundle(path, work, load_config(None))
    name = f"{path.parent.name}_{path.stem}"
    return _score(name, bundle, work / "keys" / "signing.pub", table, y, TRAIN_ROWS)


def simulator_run(work: Path, seeds: tuple[int, int], a: argparse.Namespace) -> Scored:
    """Fit on a simulated history, export int8, score a fresh stretch of another seed."""
    from trainer.config import load_config

    bundle, table, y = simulator_bundle(work, seeds, a, load_config(None))
    name = f"sim_{seeds[0]}_{seeds[1]}"
    return _score(name, bundle, work / "keys" / "signing.pub", table, y, 0)


def replay(s: Scored, hold_ratio: float, close_after: int) -> tuple[np.ndarray, int]:
    """Rows flagged under this hysteresis, and the number of alert openings."""
    from edge_agent.detect.alerts import AlertPolicy, AlertState

    state = AlertState(AlertPolicy(close_after=close_after, hold_ratio=hold_ratio))
    alert = state.update(s.error >= s.threshold, s.error >= hold_ratio * s.threshold)
    opens = int(alert[0]) + int((alert[1:] & ~alert[:-1]).sum())
    rows = np.zeros(s.row_window.shape[0], np.bool_)
    has = s.row_window >= 0
    rows[has] = alert[s.row_window[has]]
    return rows | s.sensor_fault, opens


def pooled(cases: list[Scored], hold_ratio: float, close_after: int) -> dict[str, float]:
    """Point-wise F1 and FAR over all cases' rows pooled, and their alert openings."""
    from trainer.evaluate.metrics import point_metrics

    runs = [replay(s, hold_ratio, close_after) for s in cases]
    m = point_metrics(np.concatenate([s.y for s in cases]), np.concatenate([r[0] for r in runs]))
    return {
        "f1": round(m["f1"], 4),
        "far": round(m["far"], 5),
        "openings": sum(r[1] for r in runs),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skab-limit", type=int, help="only files numbered below N in each group")
    ap.add_argument("--sim-history", type=int, default=172_800, help="simulated training rows")
    ap.add_argument("--sim-live", type=int, default=40_000, help="simulated scored rows")
    ap.add_argument("--sim-epochs", type=int, help="autoencoder epochs (default: built-in)")
    ap.add_argument("--jobs", type=int, default=2, help="SKAB files fitted side by side")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "alert_deadband.json")
    a = ap.parse_args(argv)
    if a.jobs < 1 or a.sim_history < 1 or a.sim_live < 1:
        ap.error("--jobs, --sim-history and --sim-live must be at least 1")
    from bench.skab import skab_files
    from export.keys import keygen

    files = [f for f in skab_files() if a.skab_limit is None or int(f.stem) < a.skab_limit]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deadband-bench-") as tmp:
        work = Path(tmp)
        keygen(work / "keys")
        args = [(f, work) for f in files]
        if a.jobs > 1:
            with mp.get_context("spawn").Pool(a.jobs, maxtasksperchild=4) as pool:
                skab = pool.map(skab_file, args, chunksize=1)
        else:  # in this process (a module loaded by path, as the smoke test does, included)
            skab = [skab_file(x) for x in args]
        sims = [simulator_run(work, seeds, a) for seeds in SIM_SEEDS]
    data_sets = {"skab": skab, **{s.name: [s] for s in sims}}
    grid = [
        {"hold_ratio": h, "close_after": c,
         **{name: pooled(cases, h, c) for name, cases in data_sets.items()}}
        for h, c in itertools.product(HOLD_RATIOS, CLOSE_AFTER)
    ]  # fmt: skip
    report = {
        "benchmark": "alert hysteresis grid: int8 bundles, every window scored by stage 2, "
        "hysteresis replayed with AlertState; rows flagged = alert or sensor fault",
        "skab_files": len(skab),
        "simulator": {
            "history_rows": a.sim_history,
            "live_rows": a.sim_live,
            "seeds": [list(s) for s in SIM_SEEDS],
        },
        "open_after": 3,
        "grid": grid,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
    }
    return write_report(a.out, report)


if __name__ == "__main__":
    main()
