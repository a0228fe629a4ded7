"""Normal drift benchmark: does the agent stay quiet on a rig that only warms up?

Issue 9's user trial, through the CLIs a user runs (their ``main`` functions, in process):
``trainer fit`` on the first 20 % of SKAB's ``anomaly-free.csv`` (default settings),
``export keygen`` + ``export bundle`` (int8, signed, no accelerator variants), then
``edge_agent replay`` over the whole file. Every row is normal, so every alert (and every
sensor fault by the learned stuck, noise and jump limits, replay's ``sensor_fault`` column) is a
false one. Reports the share of rows in alert after the training stretch (the target is judged
on alerts and sensor faults together; ``sensor_fault_share_after_training`` apart), overall
and per block of 1,000 rows of the file, and per channel how far it moved from its training
level in units of its training spread (standard deviation), so the channels that drive the
alarm are named.

    python bench/skab_drift.py                       # -> bench/results/skab_drift.json
    python bench/skab_drift.py --rows 3000 --epochs 2 --out X   # the reduced run CI does
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "datasets" / "skab" / "data" / "anomaly-free" / "anomaly-free.csv"
#: Share of the file the user trains on (the issue's trial: 31 minutes of a warming rig).
TRAIN_SHARE = 0.2
#: Rows per block of the alert-share profile.
BLOCK_ROWS = 1_000
#: Issue 9's outcome: alerts on at most 10 % of the rows after training, aiming at 2 %.
TARGET_MAX_SHARE = 0.10
TARGET_AIM_SHARE = 0.02


def _cli(main: Any, argv: list[str]) -> None:
    """Run one CLI entry point; its output is kept out of the bench's, a failure is raised."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(argv)
    if code not in (0, None):
        raise RuntimeError(f"{' '.join(argv[:2])} exited {code}:\n{out.getvalue()[-2000:]}")


def _prefix_file(src: Path, rows: int, dst: Path) -> Path:
    """The header and the first ``rows`` data rows of ``src`` (the reduced run's input)."""
    with open(src, encoding="utf-8") as fh:
        lines = [next(fh) for _ in range(rows + 1)]
    dst.write_text("".join(lines), encoding="utf-8")
    return dst


def channel_moves(values: np.ndarray, channels: list[str], train_rows: int) -> list[dict[str, Any]]:
    """Per channel: training mean and spread, and each later block's mean in spreads from it."""
    train = values[:train_rows]
    mean, std = train.mean(axis=0), train.std(axis=0)
    out = []
    for c, name in enumerate(channels):
        blocks = [
            float(values[s : s + BLOCK_ROWS, c].mean())
            for s in range(train_rows, values.shape[0], BLOCK_ROWS)
        ]
        spread = float(std[c]) if std[c] > 0 else float("nan")
        moves = [(b - float(mean[c])) / spread for b in blocks]
        out.append(
            {
                "channel": name,
                "train_mean": float(mean[c]),
                "train_std": float(std[c]),
                "train_min_max": [float(train[:, c].min()), float(train[:, c].max())],
                "last_block_mean": blocks[-1] if blocks else float("nan"),
                "last_block_move_in_train_std": moves[-1] if moves else float("nan"),
                "max_abs_block_move_in_train_std": max(map(abs, moves)) if moves else float("nan"),
            }
        )
    return sorted(out, key=lambda r: -r["max_abs_block_move_in_train_std"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="anomaly-free.csv")
    ap.add_argument("--rows", type=int, help="only the first N rows of the file (smoke run)")
    ap.add_argument("--epochs", type=int, help="autoencoder epochs (default: trainer's)")
    ap.add_argument("--config", type=Path, help="training TOML (default: built-in defaults)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "skab_drift.json")
    a = ap.parse_args(argv)
    if not a.data.is_file():
        raise SystemExit(f"{a.data}: not found (SKAB's anomaly-free.csv)")
    if a.config and not a.config.is_file():
        raise SystemExit(f"{a.config}: training TOML not found")

    from bench.common import machine
    from edge_agent.cli import main as agent_main
    from edge_agent.data.table import read_table
    from export.cli import main as export_main
    from trainer.cli import main as trainer_main

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="skab-drift-") as tmp:
        work = Path(tmp)
        data = _prefix_file(a.data, a.rows, work / "data.csv") if a.rows else a.data
        table = read_table(data)
        train_rows = int(TRAIN_SHARE * table.rows)
        fit_args = ["fit", "--data", str(data), "--out", str(work / "run")]
        fit_args += ["--rows", str(train_rows)]
        toml = a.config.read_text(encoding="utf-8") if a.config else ""
        if a.epochs:
            toml += f"\n[autoencoder]\nepochs = {a.epochs}\n"
        if toml:
            (work / "train.toml").write_text(toml, encoding="utf-8")
            fit_args += ["--config", str(work / "train.toml")]
        _cli(trainer_main, fit_args)
        t_fit = time.perf_counter() - t0
        _cli(export_main, ["keygen", "--out", str(work / "keys")])
        bundle_args = ["bundle", "--run", str(work / "run"), "--out", str(work / "bundle")]
        bundle_args += ["--key", str(work / "keys" / "signing.key"), "--variants", "none"]
        forced = False
        try:
            _cli(export_main, bundle_args)
        except RuntimeError as exc:
            if "parity gate" not in str(exc):
                raise
            forced = True
            _cli(export_main, [*bundle_args, "--force", "--overwrite"])
        scores = work / "scores.csv"
        replay_args = ["replay", "--bundle", str(work / "bundle"), "--data", str(data)]
        replay_args += ["--out", str(scores), "--trust", str(work / "keys" / "signing.pub")]
        _cli(agent_main, replay_args)
        manifest = json.loads((work / "bundle" / "manifest.json").read_text(encoding="utf-8"))
        with open(scores, encoding="utf-8") as fh:
            header = next(fh).strip().split(",")
            col, fault_col = header.index("alert"), header.index("sensor_fault")
            cells = [line.rstrip("\r\n").split(",") for line in fh]
            alert = np.array([c[col] == "1" or c[fault_col] == "1" for c in cells], np.bool_)
            fault = np.array([c[fault_col] == "1" for c in cells], np.bool_)
    if alert.size != table.rows:
        raise RuntimeError(f"replay wrote {alert.size} rows for {table.rows} input rows")
    after = alert[train_rows:]
    share = float(after.mean()) if after.size else float("nan")
    fault_share = float(fault[train_rows:].mean()) if after.size else float("nan")
    report: dict[str, Any] = {
        "benchmark": "SKAB anomaly-free.csv: fit on the first 20 %, int8 bundle, replay all",
        "data": a.data.name,
        "rows": table.rows,
        "train_rows": train_rows,
        "settings": (str(a.config) if a.config else "built-in defaults")
        + (f", {a.epochs} epochs" if a.epochs else ""),
        "parity_forced": forced,
        "alert_share_after_training": share,
        "sensor_fault_share_after_training": fault_share,
        "alert_share_per_block": [
            float(alert[s : s + BLOCK_ROWS].mean()) for s in range(0, alert.size, BLOCK_ROWS)
        ],
        "block_rows": BLOCK_ROWS,
        "target": {"max_share": TARGET_MAX_SHARE, "aim_share": TARGET_AIM_SHARE},
        "target_met": share <= TARGET_MAX_SHARE,
        # The channels the bundle judges against an adapting level (edge_agent.detect.baseline).
        "adapting_channels": (manifest.get("baseline") or {}).get("channels", []),
        "channels_by_move": channel_moves(table.values, list(table.channels), train_rows),
        "fit_seconds": round(t_fit, 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    brief = (
        "alert_share_after_training",
        "alert_share_per_block",
        "target_met",
        "adapting_channels",
    )
    print(json.dumps({k: report[k] for k in brief}, indent=2))
    return report


if __name__ == "__main__":
    main()
