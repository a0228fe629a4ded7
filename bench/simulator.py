"""Plant-simulator benchmark: detection per fault kind and how much the forest screen saves.

Train (default ``trainer fit``) on one simulated compressor history, export the signed int8
bundle, and score a fresh simulated stretch (another seed) through the device pipeline twice:
with the screen (the cascade as deployed) and without it (stage 2 alone). A row counts as
flagged when the operator is told about it: in alert, or with a channel past its learned stuck,
noise, jump or spike limit (a ``sensor_fault``, ``edge_agent.data.learned``); ``alerts_only``
leaves the latter out.
Reports per fault kind: point F1 (normal rows + that kind's rows), recall, episodes caught and
detection delay (median and p90, samples and seconds; :mod:`trainer.evaluate.per_kind`, as
``trainer evaluate`` reports it); the share of windows reaching stage 2; and the cascade's
recall as a share of stage 2's own recall.

    python bench/simulator.py                          # -> bench/results/simulator.json
    python bench/simulator.py --history 8000 --live 6000 --epochs 10 --out X   # CI smoke run
    python bench/simulator.py --train-seed 31 --live-seed 32 \
        --out bench/results/simulator_seeds_31_32.json     # the same on other seeds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _kind_metrics(
    y: np.ndarray, pred: np.ndarray, kinds: np.ndarray, kind: str, period_s: float
) -> dict[str, float]:
    """Point F1 on normal rows + this kind's rows; episodes caught and delays (shared code)."""
    from trainer.evaluate.metrics import point_metrics
    from trainer.evaluate.per_kind import NORMAL_KIND, per_kind_detection

    sel = (kinds == NORMAL_KIND) | (kinds == kind)
    m = point_metrics(y[sel], pred[sel])
    found = {r.kind: r.delays for r in per_kind_detection(y, pred, kinds, period_s)}
    if kind not in found:
        return {"f1": float(m["f1"]), "recall": float(m["recall"]), "episodes": 0}
    d = found[kind]
    return {
        "f1": float(m["f1"]),
        "recall": float(m["recall"]),
        "episodes": d.episodes,
        "episodes_caught": d.caught,
        "delay_median_samples": d.median_samples,
        "delay_p90_samples": d.p90_samples,
        "delay_median_s": d.median_s,
        "delay_p90_s": d.p90_s,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--history", type=int, default=172_800, help="training rows (2 days)")
    ap.add_argument("--live", type=int, default=40_000, help="scored rows")
    ap.add_argument("--epochs", type=int, help="autoencoder epochs (default: built-in)")
    ap.add_argument("--config", type=Path, help="training TOML (default: built-in defaults)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "simulator.json")
    ap.add_argument("--keep", type=Path, help="copy the bundle and the scored CSV here")
    ap.add_argument("--train-seed", type=int, default=21, help="simulator seed of the history")
    ap.add_argument("--live-seed", type=int, default=22, help="simulator seed of the scored rows")
    a = ap.parse_args(argv)

    from bench.common import bundle_past_the_gate, screen_recall_kept
    from edge_agent.bundle.verify import verify_bundle
    from edge_agent.data.table import read_table
    from edge_agent.model_slot import load_cascade
    from edge_agent.pipeline import run_pipeline
    from edge_agent.simulator import FAULT_KINDS, simulate_plant
    from export.keys import keygen
    from trainer.config import load_config
    from trainer.fit import fit

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sim-bench-") as tmp:
        work = Path(tmp)
        hist = simulate_plant(rows=a.history, seed=a.train_seed)
        live = simulate_plant(rows=a.live, seed=a.live_seed)
        hist.write_csv(work / "history.csv")
        live.write_csv(work / "live.csv")
        cfg = load_config(a.config)
        if a.epochs:
            cfg.autoencoder.epochs = a.epochs
        table = read_table(work / "history.csv", label_cols=["anomaly"])
        record = fit(table, work / "run", cfg, seed=0)
        t_fit = time.perf_counter() - t0
        keygen(work / "keys")
        # A bundle the gate refuses is scored anyway: what the detector does is the question.
        forced = bundle_past_the_gate(work / "run", work / "bundle", work / "keys" / "signing.key")
        bundle = verify_bundle(work / "bundle", work / "keys" / "signing.pub")
        cascade = load_cascade(bundle)
        test = read_table(
            work / "live.csv", label_cols=["anomaly"], channels=bundle.manifest.channel_names
        )
        res = run_pipeline(test, bundle.manifest, cascade)
        alone = run_pipeline(test, bundle.manifest, cascade, screen=False)
        if a.keep:
            shutil.copytree(work / "bundle", a.keep / "bundle", dirs_exist_ok=True)
            shutil.copy2(work / "live.csv", a.keep / "live.csv")
            shutil.copytree(work / "keys", a.keep / "keys", dirs_exist_ok=True)
    y = live.labels.astype(bool)
    kinds = np.asarray(live.fault_kind_names())
    per_kind = {
        kind: {
            "cascade": _kind_metrics(y, res.flagged, kinds, kind, live.period_s),
            "alerts_only": _kind_metrics(y, res.alert, kinds, kind, live.period_s),
            "stage2_alone": _kind_metrics(y, alone.flagged, kinds, kind, live.period_s),
        }
        for kind in FAULT_KINDS
    }
    from trainer.evaluate.metrics import point_metrics

    mc, ma = point_metrics(y, res.flagged), point_metrics(y, alone.flagged)
    mo = point_metrics(y, res.alert)
    # Window-level: how many windows reach stage 2, and how much of stage 2's recall survives.
    s2, kept = screen_recall_kept(res, alone, y)
    report: dict[str, Any] = {
        "benchmark": f"plant simulator, train seed {a.train_seed}, score seed {a.live_seed}, "
        "signed int8 bundle",
        "rows": {"history": a.history, "live": a.live},
        "anomalous_share_live": float(y.mean()),
        "cascade": {k: float(mc[k]) for k in ("f1", "precision", "recall", "far", "mar")},
        "stage2_alone": {k: float(ma[k]) for k in ("f1", "precision", "recall", "far", "mar")},
        "alerts_only": {k: float(mo[k]) for k in ("f1", "precision", "recall", "far", "mar")},
        "sensor_fault_rows": {
            "total": int(res.sensor_fault.sum()),
            "on_normal_rows": int((res.sensor_fault & ~y).sum()),
        },
        "learned_limits": {
            c.name: {
                "stuck_after": c.stuck_after,
                "noisy_above": c.noisy_above,
                "jump_above": c.jump_above,
                "spike_above": c.spike_above,
            }
            for c in bundle.manifest.channels
        },
        "windows_reaching_stage2": float(np.mean(res.windows.stage == 2)),
        "window_recall_kept_by_screen": kept / max(s2, 1),
        "per_kind": per_kind,
        "config": str(a.config) if a.config else "built-in defaults",
        "parity_forced": forced,
        "validation": record.validation.model_dump(),
        "fit_seconds": round(t_fit, 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: report[k]
                for k in ("cascade", "windows_reaching_stage2", "window_recall_kept_by_screen")
            },
            indent=2,
        )
    )
    return report


if __name__ == "__main__":
    main()
