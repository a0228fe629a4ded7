"""``python -m trainer``: learn, evaluate and simulate at the desk.

Subcommands: ``fit`` (history → run directory, after ``trainer.history_check`` has said what
the history lacks), ``evaluate`` (labelled data → metrics.json and an HTML report),
``simulate`` (write plant-simulator history with labelled faults), ``demo`` (simulate → fit →
bundle → replay, end to end), ``demo-plot`` (a live demo run as a PNG), ``federate`` (the
gateways' model deltas → the next run; ``trainer.federate``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_agent.errors import EXIT_INPUT_ERROR, EdgeAnomalyError
from export.errors import ExportError
from trainer.demo import HISTORY_ROWS, LIVE_ROWS
from trainer.demo_plot import add_arguments as add_demo_plot_arguments
from trainer.federate.cli import add_arguments as add_federate_arguments
from trainer.quiet import desk_logging, desk_parser, quiet_unless


def _parser() -> argparse.ArgumentParser:
    p = desk_parser("trainer", __doc__)
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser(
        "fit",
        help="train the two-stage detector on a history CSV",
        description="Train forest + autoencoder and calibrate thresholds.",
    )
    f.add_argument("--data", type=Path, required=True, help="history CSV (any separator)")
    f.add_argument("--out", type=Path, required=True, help="run directory to create")
    f.add_argument(
        "--label-col",
        action="append",
        default=[],
        metavar="NAME",
        help="label column (0/1), kept out of the features; repeatable",
    )
    f.add_argument("--time-col", help="timestamp column (default: timestamp/datetime/time)")
    f.add_argument("--config", type=Path, help="TOML training settings (default: built-in)")
    f.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    f.add_argument("--rows", type=int, help="use only the first N rows of the file")
    f.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    f.add_argument(
        "--agent-config",
        type=Path,
        metavar="TOML",
        help="gateway config whose [channels.X] min/max the history check compares each "
        "channel's range with",
    )
    f.add_argument(
        "--strict-history",
        action="store_true",
        help="refuse to train (exit 2) when the history check finds anything: too short, a "
        "trending channel, a stuck or narrow one",
    )

    e = sub.add_parser(
        "evaluate",
        help="score labelled data and write metrics + report",
        description="Run the device pipeline over labelled data with a run "
        "(float model) or a bundle (int8), and compare with baselines.",
    )
    e.add_argument("--run", type=Path, help="run directory from `fit`")
    e.add_argument("--bundle", type=Path, help="bundle directory from `export bundle` (int8)")
    e.add_argument("--trust", type=Path, help="public key the bundle must be signed with")
    e.add_argument("--data", type=Path, required=True, help="labelled CSV to score")
    e.add_argument("--label-col", default="anomaly", help="label column (default anomaly)")
    e.add_argument("--time-col", help="timestamp column")
    e.add_argument(
        "--skip-rows",
        type=int,
        default=0,
        help="rows used as history only, left out of the metrics (e.g. 400 on SKAB)",
    )
    e.add_argument("--out", type=Path, required=True, help="directory for metrics.json + report")

    s = sub.add_parser("simulate", help="write plant-simulator history with labelled faults")
    s.add_argument("--out", type=Path, required=True, help="CSV to write")
    s.add_argument("--rows", type=int, default=20_000, help="rows (default 20000)")
    s.add_argument("--period", type=float, default=1.0, help="sample period in s (default 1)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument(
        "--anomaly-fraction",
        type=float,
        default=0.04,
        help="share of anomalous points (default 0.04)",
    )
    d = sub.add_parser(
        "demo",
        help="simulate, train, export and replay end to end",
        description="The whole desk-to-device path on the plant simulator.",
    )
    d.add_argument("--out", type=Path, default=Path("demo_out"), help="working directory")
    d.add_argument("--epochs", type=int, help="autoencoder epochs (default: the demo's 80)")
    d.add_argument(
        "--history-rows",
        type=int,
        default=HISTORY_ROWS,
        help=f"rows (1 s each) of simulated training history (default {HISTORY_ROWS}: a day)",
    )
    d.add_argument(
        "--live-rows",
        type=int,
        default=LIVE_ROWS,
        help=f"rows of fresh data replayed for the table (default {LIVE_ROWS})",
    )
    add_demo_plot_arguments(
        sub.add_parser(
            "demo-plot",
            help="draw a live demo run: score vs threshold, injected faults, alerts",
            description="PNG of a `watch --record` timeline with the simulator's truth file.",
        )
    )
    add_federate_arguments(
        sub.add_parser(
            "federate",
            help="aggregate the gateways' signed model deltas into the next run",
            description="Verify signed deltas, aggregate them robustly, write a new run "
            "that `export bundle` packs (docs/fleet-learning.md).",
        )
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The demo prints its own four steps and summary; the stages' INFO lines would only
    # interleave with them for a newcomer. Warnings still show, and --verbose shows all.
    quiet_level = logging.WARNING if args.command == "demo" else logging.INFO
    desk_logging(args.verbose, quiet_level)
    with quiet_unless(args.verbose):
        try:
            if args.command == "federate":
                from trainer.federate.cli import run as federate

                return federate(args)
            return _run(args)
        except (EdgeAnomalyError, ExportError, FileExistsError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INPUT_ERROR


def _run(args: argparse.Namespace) -> int:
    from edge_agent.data.table import read_table

    if args.command == "simulate":
        from edge_agent.simulator import simulate_plant

        plant = simulate_plant(
            rows=args.rows,
            period_s=args.period,
            seed=args.seed,
            anomaly_fraction=args.anomaly_fraction,
        )
        plant.write_csv(args.out)
        print(
            f"wrote {args.rows} rows, {int(plant.labels.sum())} anomalous, "
            f"{len(plant.episodes)} fault episodes to {args.out}"
        )
        return 0
    if args.command == "demo-plot":
        from trainer.demo_plot import run as demo_plot

        return demo_plot(args)
    if args.command == "demo":
        from trainer.demo import run_demo

        run_demo(
            args.out,
            epochs=args.epochs,
            history_rows=args.history_rows,
            live_rows=args.live_rows,
        )
        return 0
    if args.command == "fit":
        return _fit(args)
    if args.command == "evaluate":
        from trainer.evaluate.run import evaluate, load_scorer, write_outputs

        manifest, cascade, rep, title = load_scorer(args.run, args.bundle, args.trust)
        table = read_table(
            args.data,
            time_col=args.time_col,
            label_cols=[args.label_col],
            channels=manifest.channel_names,
        )
        metrics, res, baselines = evaluate(
            table, manifest, cascade, rep, label_col=args.label_col, skip_rows=args.skip_rows
        )
        report = write_outputs(
            args.out,
            title=f"{title} on {args.data.name}",
            table=table,
            manifest=manifest,
            metrics=metrics,
            res=res,
            baselines=baselines,
            label_col=args.label_col,
            skip_rows=args.skip_rows,
        )
        c = metrics["cascade"]
        print(
            f"F1 {c['f1']:.3f}  precision {c['precision']:.3f}  recall {c['recall']:.3f}  "
            f"FAR {c['far']:.3%}  stage-2 share {c['stage2_fraction']:.1%}  "
            f"sensor-fault rows {metrics['sensor_fault_rows']}\nreport: {report}"
        )
        return 0
    return 1  # pragma: no cover


def _fit(args: argparse.Namespace) -> int:
    """``trainer fit``: the history check's warnings first, then training."""
    from edge_agent.data.table import read_table
    from trainer.config import load_config
    from trainer.fit import fit
    from trainer.history_check import check_history, configured_ranges

    cfg = load_config(args.config)
    table = read_table(args.data, time_col=args.time_col, label_cols=args.label_col)
    if args.rows:
        table = table.slice(0, args.rows)
    ranges = configured_ranges(args.agent_config) if args.agent_config else None
    check = check_history(table, cfg, ranges)
    for line in check.warning_lines():
        print(line, file=sys.stderr)
    if args.strict_history and check.findings:
        print(
            f"error: the history check found {len(check.findings)} problem(s) with "
            f"{args.data} (above); not training because of --strict-history",
            file=sys.stderr,
        )
        return EXIT_INPUT_ERROR
    record = fit(table, args.out, cfg, seed=args.seed, overwrite=args.overwrite)
    check.write(args.out)
    print(
        json.dumps(
            {
                "run": str(args.out),
                "validation": record.validation.model_dump(),
                "fit_seconds": record.fit_seconds,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
