"""Does every simulated history export to int8 without ``--force``? Issue 9's int8 outcome.

For each history length and seed: simulate the plant (labelled faults, as ``trainer simulate``
writes them), ``trainer fit`` with the labels and default settings, then ``export bundle``
without ``--force``. Records per run whether the parity gate passed, its figures (float and
int8 F1 and ROC-AUC on the parity set, the windows each model alone judges rightly, McNemar's
p, clipped input share), which channels got an adapting level, and the fit and export times.
The issue's own trial is among the defaults: a day of history, seed 31.

    python bench/sim_exports.py                       # -> bench/results/sim_exports.json
    python bench/sim_exports.py --hours 1 --seeds 5 --epochs 2 --out X   # the smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench.common import int_list, machine, number_list  # noqa: E402

HOUR_ROWS = 3_600  # the simulator samples once a second
# The parity figures recorded per run (edge_agent.bundle.manifest.ParitySpec).
PARITY_FIELDS = (
    "windows",
    "positives",
    "synthetic",
    "labelled",
    "f1_float",
    "f1_int8",
    "auc_float",
    "auc_int8",
    "int8_worse",
    "int8_better",
    "int8_worse_p",
    "input_clipped_fraction",
)


def one_run(work: Path, hours: float, seed: int, epochs: int | None) -> dict[str, Any]:
    """Simulate, fit with labels, export without --force; the gate's verdict and figures."""
    from edge_agent.data.table import read_table
    from edge_agent.simulator import simulate_plant
    from export.bundle import build_bundle
    from export.errors import ExportError
    from trainer.config import load_config
    from trainer.fit import fit

    rows = int(hours * HOUR_ROWS)
    tag = f"{hours:g}h-seed{seed}"
    simulate_plant(rows=rows, seed=seed).write_csv(work / f"{tag}.csv")
    cfg = load_config(None)
    if epochs:
        cfg.autoencoder.epochs = epochs
    t0 = time.perf_counter()
    record = fit(
        read_table(work / f"{tag}.csv", label_cols=["anomaly"]), work / f"run-{tag}", cfg, seed=0
    )
    t1 = time.perf_counter()
    out: dict[str, Any] = {
        "hours": hours,
        "rows": rows,
        "seed": seed,
        "adapting_channels": record.baseline.channels if record.baseline else [],
    }
    try:
        manifest = build_bundle(
            work / f"run-{tag}", work / f"bundle-{tag}", work / "keys" / "signing.key", variants=()
        )
    except ExportError as exc:
        out["exported_without_force"] = False
        out["refusal"] = str(exc).splitlines()[0]
    else:
        p = manifest.parity
        out["exported_without_force"] = True
        out["parity"] = {k: getattr(p, k) for k in PARITY_FIELDS}
    out["seconds"] = {"fit": round(t1 - t0, 1), "export": round(time.perf_counter() - t1, 1)}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--hours", type=number_list, default="6,24,48", help="history lengths, comma list"
    )
    ap.add_argument("--seeds", type=int_list, default="21,31", help="simulator seeds, comma list")
    ap.add_argument("--epochs", type=int, help="autoencoder epochs (default: trainer's)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sim_exports.json")
    a = ap.parse_args(argv)

    from export.keys import keygen

    t0 = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="sim-exports-") as tmp:
        work = Path(tmp)
        keygen(work / "keys")
        for hours in a.hours:
            for seed in a.seeds:
                runs.append(one_run(work, hours, seed, a.epochs))
                print(json.dumps(runs[-1]), flush=True)
    report: dict[str, Any] = {
        "benchmark": "plant simulator: trainer fit (labels, defaults) then export bundle "
        "without --force, per history length and seed",
        "settings": "built-in defaults" + (f", {a.epochs} epochs" if a.epochs else ""),
        "runs": runs,
        "all_exported_without_force": all(r["exported_without_force"] for r in runs),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
