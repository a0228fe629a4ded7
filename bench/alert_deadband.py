"""Alert hysteresis grid on SKAB and the simulator: how the deadband and close were chosen.

Each model is fitted and exported once (int8, signed) and every window is scored by stage 2
(the screen off, so every window has an error); then the hysteresis, the project's own
``AlertState``, is replayed over a grid of ``hold_ratio`` (the deadband: an open alert holds
while a window's error reaches this share of the threshold) and ``close_after`` with
``open_after`` at its default. A row counts as flagged when in alert or with a sensor fault, as
in ``bench/skab.py`` and ``bench/simulator.py``. Reported per data set: pooled point-wise F1 and
FAR (SKAB: rows [400, end) of all 34 files; simulator: the scored stretch), and the number of
alert openings (an alert that closes inside a fault and opens again counts twice); on SKAB also
the NAB scores of its change-point protocol (standard, low-FP, low-FN), the published ones'
second benchmark.

A second grid holds the deadband and close at the defaults and moves what sets the detector's
sensitivity instead: ``open_after`` and a factor on every model's alert threshold. It shows what
each NAB profile costs in false alarms on SKAB and on the simulator: MSCRED's low-FN score
rewards an alarm edge in each of SKAB's four change-point windows per anomaly, so it is bought
with flapping or with false alarms, and this grid says how many.

    python bench/alert_deadband.py                  # -> bench/results/alert_deadband.json
    python bench/alert_deadband.py --skab-limit 1 --sim-history 8000 --sim-live 6000 \
        --sim-epochs 5 --out X                      # smoke run
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, write_report  # noqa: E402
from bench.fitted import (  # noqa: E402
    Fitted,
    add_fit_args,
    over_skab,
    parsed,
    simulator_bundle,
    skab_bundle,
)

HOLD_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
CLOSE_AFTER = (3, 5, 8, 10, 15)
OPEN_AFTER = (1, 2, 3)
THRESHOLD_FACTORS = (0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)
SIM_SEEDS = ((21, 22), (31, 32))
NAB_PROFILES = ("standard", "low_fp", "low_fn")
# SKAB's published NAB leader (datasets README), the scores to compare with.
MSCRED_NAB = {"standard": 32.42, "low_fp": 16.53, "low_fn": 40.28}


@dataclass(frozen=True)
class Hysteresis:
    """One point of a grid: the alert rule's settings and a factor on the alert threshold."""

    hold_ratio: float
    close_after: int
    open_after: int = 3
    threshold_factor: float = 1.0


@dataclass(frozen=True)
class Scored:
    """One model's windows as stage 2 scored them, and the rows they stand for."""

    name: str
    y: np.ndarray  # labels of the scored rows
    row_window: np.ndarray  # per scored row, its window (-1: none)
    error: np.ndarray  # per window, stage 2's error
    threshold: float  # the int8 bundle's alert threshold
    sensor_fault: np.ndarray  # per scored row: a channel past a learned limit
    # SKAB: per scored row its time (s) and change-point flag, for the NAB scores; None: no NAB
    changepoints: tuple[np.ndarray, np.ndarray] | None = None


def _score(f: Fitted, pub: Path, changepoints: np.ndarray | None = None) -> Scored:
    from edge_agent.bundle.verify import verify_bundle
    from edge_agent.model_slot import load_cascade
    from edge_agent.pipeline import run_pipeline

    verified = verify_bundle(f.bundle, pub)
    cascade = load_cascade(verified)
    res = run_pipeline(f.table, verified.manifest, cascade, screen=False)
    nab = None
    if changepoints is not None:
        nab = (f.table.timestamps[f.first:], changepoints[f.first:].astype(bool))
    return Scored(
        f.name, f.y[f.first:], res.window_of_row[f.first:], res.windows.error,
        cascade.threshold.alert_threshold, res.sensor_fault[f.first:], nab,
    )  # fmt: skip


def skab_file(args: tuple[Path, Path]) -> Scored:
    """Fit on rows [0, 400) without labels, export int8, score every window."""
    from edge_agent.data.table import read_table
    from trainer.config import load_config

    path, work = args
    changepoints = read_table(path, label_cols=["changepoint"]).labels["changepoint"]
    fitted = skab_bundle(path, work, load_config(None))
    return _score(fitted, work / "keys" / "signing.pub", changepoints)


def simulator_run(work: Path, seeds: tuple[int, int], a: argparse.Namespace) -> Scored:
    """Fit on a simulated history, export int8, score a fresh stretch of another seed."""
    from trainer.config import load_config

    fitted = simulator_bundle(work, seeds, a, load_config(None))
    return _score(fitted, work / "keys" / "signing.pub")


def replay(s: Scored, h: Hysteresis) -> tuple[np.ndarray, int]:
    """Rows flagged under this hysteresis, and the number of alert openings."""
    from edge_agent.detect.alerts import AlertPolicy, AlertState

    policy = AlertPolicy(
        open_after=h.open_after, close_after=h.close_after, hold_ratio=h.hold_ratio
    )
    threshold = s.threshold * h.threshold_factor
    alert = AlertState(policy).update(s.error >= threshold, s.error >= h.hold_ratio * threshold)
    opens = int(alert[0]) + int((alert[1:] & ~alert[:-1]).sum())
    rows = np.zeros(s.row_window.shape[0], np.bool_)
    has = s.row_window >= 0
    rows[has] = alert[s.row_window[has]]
    return rows | s.sensor_fault, opens


def pooled(cases: list[Scored], h: Hysteresis) -> dict[str, float]:
    """Point-wise F1 and FAR over all cases' rows pooled, and their alert openings; the NAB
    scores too where every case has its change points."""
    from trainer.evaluate.metrics import nab_scores_pooled, point_metrics

    runs = [replay(s, h) for s in cases]
    m = point_metrics(np.concatenate([s.y for s in cases]), np.concatenate([r[0] for r in runs]))
    out: dict[str, float] = {
        "f1": round(m["f1"], 4),
        "far": round(m["far"], 5),
        "openings": sum(r[1] for r in runs),
    }
    if all(s.changepoints is not None for s in cases):
        files = [
            (s.y, r[0], *s.changepoints) for s, r in zip(cases, runs, strict=True) if s.changepoints
        ]
        for profile in NAB_PROFILES:
            out[f"nab_{profile}"] = round(nab_scores_pooled(files, profile=profile), 2)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fit_args(ap, ROOT / "bench" / "results" / "alert_deadband.json")
    a = parsed(ap, argv)
    from trainer.config import DEFAULT_ALERTS

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deadband-bench-") as tmp:
        work = Path(tmp)
        skab = over_skab(skab_file, work, a)
        sims = [simulator_run(work, seeds, a) for seeds in SIM_SEEDS]
    data_sets = {"skab": skab, **{s.name: [s] for s in sims}}

    def row(h: Hysteresis) -> dict[str, Any]:
        return {**asdict(h), **{name: pooled(cases, h) for name, cases in data_sets.items()}}

    grid = [row(Hysteresis(h, c)) for h, c in itertools.product(HOLD_RATIOS, CLOSE_AFTER)]
    sensitivity = [
        row(Hysteresis(DEFAULT_ALERTS.hold_ratio, DEFAULT_ALERTS.close_after, o, f))
        for o, f in itertools.product(OPEN_AFTER, THRESHOLD_FACTORS)
    ]
    report = {
        "benchmark": "alert hysteresis grid: int8 bundles, every window scored by stage 2, "
        "hysteresis replayed with AlertState; rows flagged = alert or sensor fault",
        "skab_files": len(skab),
        "simulator": {
            "history_rows": a.sim_history,
            "live_rows": a.sim_live,
            "seeds": [list(s) for s in SIM_SEEDS],
        },
        "open_after": DEFAULT_ALERTS.open_after,
        "grid": grid,
        # The default deadband and close; open_after and the threshold moved instead.
        "sensitivity": sensitivity,
        "mscred_nab": MSCRED_NAB,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
    }
    return write_report(a.out, report)


if __name__ == "__main__":
    main()
