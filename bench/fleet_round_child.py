"""What training a local round in a child process costs the gateway: start and memory.

Builds a dense int8 bundle on plant-simulator history (``bench.common.make_bundle``) and a
buffer-sized set of another compressor's normalized windows, then runs
``bench/fleet_device_cost.py`` twice in fresh edge-only subprocesses: training in that process,
and in the nice-19 child process the agent uses (``edge_agent.learn.isolated``). Reported: both
runs' figures side by side (CPU, wall time including the child's start, the child's own peak
RSS) and the difference in wall time.

    python bench/fleet_round_child.py                    # -> bench/results/fleet_round_child.json
    python bench/fleet_round_child.py --windows 300 --epochs 1 --history 6000 --out X  # smoke
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, make_bundle, write_report  # noqa: E402

COST_TIMEOUT_S = 300
LOCAL_SEED = 11  # another compressor than the bundle's history (seed 21)


def inputs(work: Path, a: argparse.Namespace) -> list[str]:
    """Weights, windows and layers files for ``fleet_device_cost.py``; its arguments."""
    import numpy as np

    from edge_agent.bundle.verify import verify_bundle
    from edge_agent.data.table import SensorTable
    from edge_agent.learn.bundle_weights import load_train_weights
    from edge_agent.learn.history import history_windows
    from edge_agent.simulator import simulate_plant

    bundle, pub = make_bundle(work, history_rows=a.history, epochs=a.fit_epochs)
    verified = verify_bundle(bundle, pub)
    weights = load_train_weights(verified.path, verified.manifest)
    learning = verified.manifest.learning
    if weights is None or learning is None:
        raise SystemExit("the bundle carries no training weights")
    plant = simulate_plant(rows=2 * a.windows + 100, seed=LOCAL_SEED, anomaly_fraction=0.0)
    table = SensorTable("local", plant.timestamps, plant.values, plant.channels)
    windows, _ = history_windows(table, verified.manifest, hop=2)
    (work / "w.npz").write_bytes(weights.to_npz_bytes())
    np.save(work / "x.npy", np.ascontiguousarray(windows[: a.windows]))
    (work / "layers.json").write_text(json.dumps([x.model_dump() for x in learning.layers]))
    return ["--weights", str(work / "w.npz"), "--windows", str(work / "x.npy"),
            "--layers", str(work / "layers.json"), "--epochs", str(a.epochs),
            "--max-windows", str(a.windows)]  # fmt: skip


def cost(args: list[str]) -> dict[str, Any]:
    script = Path(__file__).with_name("fleet_device_cost.py")
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                         timeout=COST_TIMEOUT_S, check=True)  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=5000, help="buffered windows trained on")
    ap.add_argument("--epochs", type=int, default=2, help="local epochs")
    ap.add_argument("--history", type=int, default=20_000, help="simulated rows for the bundle")
    ap.add_argument("--fit-epochs", type=int, default=5, help="autoencoder epochs of the bundle")
    out = ROOT / "bench" / "results" / "fleet_round_child.json"
    ap.add_argument("--out", type=Path, default=out, help=f"JSON to write (default: {out})")
    a = ap.parse_args(argv)
    if min(a.windows, a.epochs, a.history, a.fit_epochs) < 1:
        ap.error("--windows, --epochs, --history and --fit-epochs must be at least 1")
    with tempfile.TemporaryDirectory(prefix="round-child-") as tmp:
        args = inputs(Path(tmp), a)
        here = cost(args)
        child = cost([*args, "--in-child"])
    report = {
        "benchmark": "one local round trained in the calling process and in the agent's nice-19 "
        "child process (fleet_device_cost.py, fresh edge-only subprocesses)",
        "in_process": here,
        "in_child": child,
        "child_start_wall_s": round(child["wall_s"] - here["wall_s"], 3),
        "machine": machine(),
    }
    return write_report(a.out, report)


if __name__ == "__main__":
    main()
