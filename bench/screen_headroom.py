"""Screen limits' headroom on SKAB and the simulator: how much stage 2 work each factor saves.

``trainer fit`` widens the envelope's edges and raises the window residual's limit by the
headroom stage 2's threshold gets for a short history, fading faster as it grows (``[forest]
limits_follow_margin``, ``trainer.fit.screen_headroom``: 2.25 on SKAB's 400-row histories,
1.00004 on 2 days of the simulator).
This bench fits every model with the limits as the training windows showed them (the option
off), exports int8 and scores every window with stage 2; then it replays the screen's decision
for a grid of factors: a window goes on when it lies beyond ``factor`` times the envelope's
reach from the median, its residual exceeds ``factor`` times the limit, or the forest's score
reaches the screen threshold. Reported per data set and factor: the share of scored windows
that reach stage 2, and the share of stage 2's own alerts on anomalous windows the screen keeps
(the issue's rule: at least 98 %); also the share of windows stage 2 alerts on at all, below
which no screen that keeps its recall can go. This is the screen's own decision: the agent also
sends every window to stage 2 while an alert is open, which keeps more (``bench/skab.py`` and
``bench/simulator.py`` measure the cascade as it runs).

The simulator is also fitted on shorter histories (``--sim-short``: 400 rows as SKAB's, up to
6 hours), so that the factor for a short history is checked on a second data set rather than
read off SKAB's; each summary also gives both shares at the factor ``trainer fit`` applies for
that history (``at_fit_headroom``).

    python bench/screen_headroom.py               # -> bench/results/screen_headroom.json
    python bench/screen_headroom.py --skab-limit 1 --sim-history 6000 --sim-live 3000 \\
        --sim-epochs 3 --sim-short 1000 --out X   # smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import int_list, machine, write_report  # noqa: E402
from bench.fitted import (  # noqa: E402
    Fitted,
    add_fit_args,
    over_skab,
    parsed,
    simulator_bundle,
    skab_bundle,
)

FACTORS = (1.0, 1.5, 2.25, 3.0, 4.0, 5.0, 6.0, 8.0)
SIM_SEEDS = ((21, 22), (31, 32))
KEEP_RECALL = 0.98


@dataclass(frozen=True)
class ScreenParts:
    """Per scored window: the screen's three tests before any headroom, and stage 2's verdict."""

    name: str
    envelope: np.ndarray  # exceedance of the unwidened envelope (> 0: outside)
    residual: np.ndarray  # SPE / limit of the unwidened residual (> 1: above)
    forest: np.ndarray  # the forest's score reaches the screen threshold
    alerts: np.ndarray  # stage 2's error reaches the alert threshold
    anomalous: np.ndarray  # a labelled row lies in the window
    margin: float  # the threshold's margin for this history
    headroom: float  # the factor fit widens the screen's limits by for it


def _parts(f: Fitted, pub: Path) -> ScreenParts:
    """The screen's parts over the scored windows of one fitted model."""
    from edge_agent.bundle.verify import verify_bundle
    from edge_agent.detect.windows import gather_windows, screen_features
    from edge_agent.model_slot import load_cascade
    from edge_agent.pipeline import prepare, run_pipeline
    from trainer.fit import screen_headroom

    verified = verify_bundle(f.bundle, pub)
    manifest, cascade = verified.manifest, load_cascade(verified)
    forest = cascade.forest
    if forest.envelope is None or forest.residual is None:
        raise ValueError(f"{f.name}: the bench needs a screen with an envelope and a residual")
    res = run_pipeline(f.table, manifest, cascade, screen=False)
    _, xn, ends = prepare(f.table, manifest)
    if ends.size != res.windows.error.size:
        scored_n = res.windows.error.size
        raise AssertionError(f"{f.name}: {ends.size} prepared windows, {scored_n} scored")
    w = manifest.window.length
    feats = screen_features(xn, forest.sample_stats(xn), ends, w)
    windows = gather_windows(xn, ends, w)
    rows = np.flatnonzero(res.window_of_row >= 0)
    rows = rows[rows >= f.first]
    scored = np.zeros(ends.size, bool)
    scored[res.window_of_row[rows]] = True
    anomalous = np.zeros(ends.size, bool)
    np.logical_or.at(anomalous, res.window_of_row[rows], f.y[rows])
    history = f.record.history_samples
    return ScreenParts(
        f.name,
        forest.envelope.exceedance(feats)[scored],
        (forest.residual.spe(windows) / forest.residual.limit)[scored],
        (forest.score(feats) >= manifest.forest.screen_threshold)[scored],
        (res.windows.error >= cascade.threshold.alert_threshold)[scored],
        anomalous[scored],
        f.record.threshold_margin,
        screen_headroom(f.record.config.threshold, history),
    )


def skab_file(args: tuple[Path, Path]) -> ScreenParts:
    path, work = args
    return _parts(skab_bundle(path, work, _unwidened()), work / "keys" / "signing.pub")


def _unwidened() -> Any:
    from trainer.config import load_config

    cfg = load_config(None)
    cfg.forest.limits_follow_margin = False
    return cfg


def _sent(c: ScreenParts, factor: float) -> np.ndarray:
    """The screen's decision per window with its limits widened by ``factor``."""
    return (c.envelope > factor - 1.0) | (c.residual > factor) | c.forest


def shares(cases: list[ScreenParts], factor: float | None) -> dict[str, float]:
    """Pooled over ``cases``, each widened by ``factor`` (by its own fit headroom when None):
    the share of windows sent on, and of stage 2's alerts on anomalous windows kept."""
    sent = np.concatenate([_sent(c, c.headroom if factor is None else factor) for c in cases])
    caught = np.concatenate([c.alerts & c.anomalous for c in cases])
    return {
        "stage2_fraction": round(float(sent.mean()), 4),
        "recall_kept": round(float((sent & caught).sum() / max(int(caught.sum()), 1)), 5),
    }


def sweep(cases: list[ScreenParts]) -> list[dict[str, float]]:
    """Per factor, pooled over ``cases``: windows sent on, and stage 2's recall kept."""
    return [{"factor": f, **shares(cases, f)} for f in FACTORS]


def summary(cases: list[ScreenParts]) -> dict[str, Any]:
    rows = sweep(cases)
    allowed = [r for r in rows if r["recall_kept"] >= KEEP_RECALL]
    return {
        "windows": int(sum(c.alerts.size for c in cases)),
        "stage2_alerts_fraction": round(
            float(np.concatenate([c.alerts for c in cases]).mean()), 4
        ),
        "anomalous_windows_stage2_alerts": int(sum((c.alerts & c.anomalous).sum() for c in cases)),
        "threshold_margin": sorted({round(c.margin, 5) for c in cases}),
        "fit_headroom": sorted({round(c.headroom, 5) for c in cases}),
        "lowest_fraction_keeping_98pct": min(allowed, key=lambda r: r["stage2_fraction"])
        if allowed
        else None,
        "at_fit_headroom": shares(cases, None),
        "grid": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fit_args(ap, ROOT / "bench" / "results" / "screen_headroom.json")
    ap.add_argument(
        "--sim-short",
        type=int_list,
        default="400,1000,3000,10000,21600",
        help="shorter simulated histories (rows, comma list), each seed pair fitted on each",
    )
    a = parsed(ap, argv)
    if min(a.sim_short) < 1:
        ap.error("--sim-short: every history must be at least 1 row")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="headroom-bench-") as tmp:
        work = Path(tmp)
        skab = over_skab(skab_file, work, a)
        pub = work / "keys" / "signing.pub"
        sims = [_parts(simulator_bundle(work, s, a, _unwidened()), pub) for s in SIM_SEEDS]
        by_history = {
            rows: [
                _parts(simulator_bundle(work, s, a, _unwidened(), history_rows=rows), pub)
                for s in SIM_SEEDS
            ]
            for rows in a.sim_short
        }
    report = {
        "benchmark": "screen limits' headroom: int8 bundles fitted with the limits unwidened, "
        "every window scored by stage 2, the screen's decision replayed per factor (without "
        "stage 2 following open alerts, which the agent adds)",
        "keep_recall": KEEP_RECALL,
        "skab_files": len(skab),
        "simulator": {
            "history_rows": a.sim_history,
            "live_rows": a.sim_live,
            "seeds": [list(s) for s in SIM_SEEDS],
        },
        "skab": summary(skab),
        **{s.name: summary([s]) for s in sims},
        "simulator_by_history": {
            str(rows): {s.name: summary([s]) for s in cases} for rows, cases in by_history.items()
        },
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
    }
    return write_report(a.out, report)


if __name__ == "__main__":
    main()
