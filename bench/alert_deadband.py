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


def _score(f: Fitted, pub: Path) -> Scored:
    from edge_agent.bundle.verify import verify_bundle
    from edge_agent.model_slot import load_cascade
    from edge_agent.pipeline import run_pipeline

    verified = verify_bundle(f.bundle, pub)
    cascade = load_cascade(verified)
    res = run_pipeline(f.table, verified.manifest, cascade, screen=False)
    return Scored(
        f.name, f.y[f.first:], res.window_of_row[f.first:], res.windows.error,
        cascade.threshold.alert_threshold, res.sensor_fault[f.first:],
    )  # fmt: skip


def skab_file(args: tuple[Path, Path]) -> Scored:
    """Fit on rows [0, 400) without labels, export int8, score every window."""
    from trainer.config import load_config

    path, work = args
    return _score(skab_bundle(path, work, load_config(None)), work / "keys" / "signing.pub")


def simulator_run(work: Path, seeds: tuple[int, int], a: argparse.Namespace) -> Scored:
    """Fit on a simulated history, export int8, score a fresh stretch of another seed."""
    from trainer.config import load_config

    fitted = simulator_bundle(work, seeds, a, load_config(None))
    return _score(fitted, work / "keys" / "signing.pub")


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
    add_fit_args(ap, ROOT / "bench" / "results" / "alert_deadband.json")
    a = parsed(ap, argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deadband-bench-") as tmp:
        work = Path(tmp)
        skab = over_skab(skab_file, work, a)
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
