"""What the adapting level (``edge_agent.detect.baseline``) costs the device pipeline.

One signed int8 bundle on simulated compressor history (``common.make_bundle``), scored on a
fresh simulated stretch twice in the same process, alternating: with every level fixed (no
baseline) and with a baseline that adapts every channel (the most the level step can cost).
Reported per variant: batch rows/s and channel-samples/s of ``run_pipeline`` (what ``replay``
does) and the latency of one-row pushes that complete a window (what the daemon does), p50/p99
over the pushes. Runs on the kernels the process resolves (``python -m edge_agent.kernels``
says which).

    python bench/baseline_cost.py          # -> bench/results/baseline_cost.json
    python bench/baseline_cost.py --history 8000 --live 3000 --epochs 2 --pushes 300 --out X
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--history", type=int, default=20_000, help="training rows")
    ap.add_argument("--live", type=int, default=40_000, help="scored rows (batch)")
    ap.add_argument("--epochs", type=int, default=20, help="autoencoder epochs")
    ap.add_argument("--pushes", type=int, default=20_000, help="one-row pushes timed")
    ap.add_argument("--repeats", type=int, default=5, help="alternating rounds (median kept)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "baseline_cost.json")
    a = ap.parse_args(argv)

    from bench.common import machine, make_bundle, write_report
    from edge_agent.bundle.verify import verify_bundle
    from edge_agent.data.table import SensorTable
    from edge_agent.detect.baseline import LevelBaseline
    from edge_agent.kernels import backend
    from edge_agent.model_slot import load_cascade
    from edge_agent.pipeline import StreamingPipeline, run_pipeline
    from edge_agent.simulator import simulate_plant
    from trainer.config import BaselineConfig

    with tempfile.TemporaryDirectory(prefix="baseline-cost-") as tmp:
        bundle_dir, pub = make_bundle(Path(tmp), history_rows=a.history, epochs=a.epochs)
        bundle = verify_bundle(bundle_dir, pub)
        cascade = load_cascade(bundle)
    exported = bundle.manifest
    fixed = exported.model_copy(update={"baseline": None})
    d = BaselineConfig()
    every = LevelBaseline(
        channels=fixed.channel_names,
        time_constant_s=d.time_constant_s,
        max_step=d.max_step,
        max_offset=d.max_offset,
    )
    variants = {"fixed": fixed, "all_adapting": fixed.model_copy(update={"baseline": every})}
    live = simulate_plant(rows=a.live, seed=22)
    table = SensorTable("live", live.timestamps, live.values, tuple(live.channels))
    ts, vals = table.timestamps, table.select(fixed.channel_names).values
    n_push = min(a.pushes, ts.size - fixed.window.length)

    def batch(m: Any) -> float:
        t0 = time.perf_counter()
        run_pipeline(table, m, cascade)
        return time.perf_counter() - t0

    def stream(m: Any) -> np.ndarray:
        pipe = StreamingPipeline(m, cascade)
        w = fixed.window.length
        pipe.push(ts[: w - 1], vals[: w - 1])  # warm the ring: every timed push completes one
        out = np.empty(n_push)
        for i in range(n_push):
            k = w - 1 + i
            t0 = time.perf_counter()
            pipe.push(ts[k : k + 1], vals[k : k + 1])
            out[i] = time.perf_counter() - t0
        return out

    for m in variants.values():  # first calls (compilation, caches) are not timed
        batch(m)
        stream(m)
    secs: dict[str, list[float]] = {k: [] for k in variants}
    lat: dict[str, list[np.ndarray]] = {k: [] for k in variants}
    for _ in range(a.repeats):
        for name, m in variants.items():
            secs[name].append(batch(m))
            lat[name].append(stream(m))
    report: dict[str, Any] = {
        "benchmark": "adapting level: fixed levels vs every channel adapting, same bundle",
        "kernels": backend().kind,
        "rows": a.live,
        "channels": len(fixed.channels),
        "exported_bundle_adapts": (
            exported.baseline.channels if exported.baseline is not None else []
        ),
        "pushes_timed": n_push,
        "repeats": a.repeats,
    }
    for name in variants:
        s = float(np.median(secs[name]))
        pushes = np.concatenate(lat[name]) * 1e3
        report[name] = {
            "batch_seconds": round(s, 4),
            "batch_rows_per_s": round(a.live / s),
            "batch_channel_samples_per_s": round(a.live * len(fixed.channels) / s),
            "push_ms_p50": round(float(np.percentile(pushes, 50)), 4),
            "push_ms_p99": round(float(np.percentile(pushes, 99)), 4),
        }
    f, v = report["fixed"], report["all_adapting"]
    report["batch_slowdown"] = round(v["batch_seconds"] / f["batch_seconds"], 3)
    report["push_p99_ratio"] = round(v["push_ms_p99"] / f["push_ms_p99"], 3)
    report["load_average_1min"] = os.getloadavg()[0]
    report["machine"] = machine()
    return write_report(a.out, report)


if __name__ == "__main__":
    main()
