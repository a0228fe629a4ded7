"""``python -m edge_agent``: the gateway's command line.

Subcommands: ``run`` (the daemon), ``validate`` (check a config), ``events`` (recent events
from the local store), ``watch`` (a live view of a running agent), ``simulate`` (the plant
simulator behind real Modbus/serial endpoints), ``replay`` (the device pipeline over a file),
``adapt`` (a gateway's fleet-learning round on a file, ``edge_agent.learn.adapt_cli``) and
``version``. Errors in input (data, bundle, config) print one clear message and exit with
code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from edge_agent import __version__
from edge_agent.errors import EXIT_INPUT_ERROR, EdgeAnomalyError
from edge_agent.events import EventKind
from edge_agent.learn import adapt_cli
from edge_agent.logs import setup_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge_agent", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "replay",
        help="score a CSV through the device pipeline",
        description="Verify a bundle, then score every row of a CSV exactly as the gateway "
        "would, writing timestamp, stage, score, p_anomaly, alert, sensor_fault per input row "
        "(sensor_fault: a channel past the model's learned stuck, noise, jump or spike limit).",
    )
    r.add_argument(
        "--bundle", type=Path, required=True, help="bundle directory from `export bundle`"
    )
    r.add_argument("--data", type=Path, required=True, help="CSV with the model's channels")
    r.add_argument("--out", type=Path, required=True, help="output CSV (one row per input row)")
    r.add_argument(
        "--trust",
        type=Path,
        required=True,
        help="trusted Ed25519 public key (PEM) the bundle must be signed with",
    )
    r.add_argument("--time-col", help="timestamp column (default: timestamp/datetime/time)")
    r.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    r.add_argument(
        "--local-history", type=Path, help="a machine's own history CSV: calibrate the alert "
        "threshold on its normal windows first, as that gateway does (fleet learning)",
    )
    adapt_cli.add_parser(sub)
    sub.add_parser("version", help="print the agent version")

    def with_config(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_, description=description)
        q.add_argument("--config", type=Path, required=True, help="machine config (TOML)")
        q.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY.PATH=VALUE",
            help="override a config value, e.g. --set mqtt.host=10.0.0.5 or "
            "--set sources.0.port=1502 (repeatable)",
        )
        return q

    run = with_config(
        "run",
        "run the daemon",
        "Poll the config's sources, score every window on the device and deliver events. "
        "Runs until SIGTERM/SIGINT; SIGHUP reloads the config.",
    )
    run.add_argument("--max-rows", type=int, help=argparse.SUPPRESS)
    with_config(
        "validate",
        "check a config and exit",
        "Load the config with its defaults layers and overrides, report every problem "
        "(file, line, key path, value, expectation) and exit 2 if there is any.",
    )
    ev = with_config(
        "events", "list recent events", "List recent events from the local store, newest first."
    )
    ev.add_argument("--json", action="store_true", help="one JSON object per line")
    ev.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    ev.add_argument("--kind", choices=get_args(EventKind), help="only this kind")
    sim = with_config(
        "simulate",
        "serve the plant simulator over the config's Modbus/serial endpoints",
        "Start real Modbus TCP/RTU servers and serial line feeds for exactly the sources "
        "the config describes, with values from the plant simulator or a CSV.",
    )
    sim.add_argument("--data", type=Path, help="CSV to serve instead of the simulator (loops)")
    sim.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    sim.add_argument(
        "--fault-fraction",
        type=float,
        default=0.08,
        help="share of simulated samples inside a fault episode (default 0.08)",
    )
    sim.add_argument(
        "--speed", type=float, default=1.0, help="rows per second of wall time (default 1)"
    )
    sim.add_argument(
        "--demo",
        action="store_true",
        help="demo schedule: the first fault within a minute, then every fault kind in turn "
        "with normal stretches between, cycling (--fault-fraction does not apply)",
    )
    sim.add_argument(
        "--truth",
        type=Path,
        help="append a JSON line as each injected fault episode starts and ends "
        "(kind, channel, start, end in epoch s)",
    )
    w = with_config(
        "watch",
        "live view of a running agent",
        "Show what a running agent is doing (its /metrics, and its events and retained "
        "status over MQTT as an upstream consumer sees them, or from the local store without "
        "[mqtt]): in place on a terminal, as plain lines otherwise. At the end (--minutes, "
        "Ctrl-C or SIGTERM) print injected faults (--truth) against detected episodes.",
    )
    w.add_argument("--truth", type=Path, help="truth file of `simulate --truth` (JSON lines)")
    w.add_argument("--minutes", type=float, help="stop after this many minutes (default: never)")
    w.add_argument("--record", type=Path, help="write the per-second timeline (JSON lines)")
    return p


def _command(args: argparse.Namespace) -> int:
    from edge_agent.config.load import load_config

    if args.command == "run":
        from edge_agent.agent import run_agent

        return run_agent(
            args.config, args.overrides, max_rows=args.max_rows, verbose=args.verbose
        )
    cfg = load_config(args.config, args.overrides)
    if args.command == "validate":
        kinds = ", ".join(f"{s.name} ({s.type})" for s in cfg.sources)
        broker = f"{cfg.mqtt.host}:{cfg.mqtt.port}" if cfg.mqtt else "none (store and log)"
        print(f"{args.config}: ok: machine {cfg.machine_id}; sources {kinds}; broker {broker}")
        return 0
    if args.command == "events":
        from edge_agent.agent import EVENTS_DB
        from edge_agent.deliver.outbox import format_events, read_recent

        path = cfg.state_dir / EVENTS_DB
        if not path.exists():
            print(f"no events yet ({path} does not exist)")
            return 0
        # Read-only: never a second writer beside the running daemon.
        print(format_events(read_recent(path, args.limit, args.kind), as_json=args.json))
        return 0
    if args.command == "simulate":
        from edge_agent.simulate import run_simulate

        run_simulate(
            cfg,
            data=args.data,
            seed=args.seed,
            fault_fraction=args.fault_fraction,
            speed=args.speed,
            demo=args.demo,
            truth=args.truth,
        )
        return 0
    assert args.command == "watch", args.command  # argparse enforces a known command
    from edge_agent.watch import run_watch

    return run_watch(
        cfg, out=sys.stdout, tty=sys.stdout.isatty(), truth=args.truth,
        minutes=args.minutes, record=args.record,
    )


def _replay(args: argparse.Namespace) -> int:
    from edge_agent.replay import replay_stream

    res = replay_stream(
        args.bundle,
        args.data,
        args.out,
        args.trust,
        time_col=args.time_col,
        num_threads=args.threads,
        local_history=args.local_history,
    )
    if res.local_threshold is not None:
        print(res.local_threshold)
    print(
        f"scored {res.rows} rows: {res.stage2_rows} reached stage 2, "
        f"{res.alert_rows} in alert, {res.sensor_fault_rows} with a sensor fault (learned "
        f"limits); wrote {args.out}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    if args.verbose:
        from edge_agent.interpreter import show_runtime_log

        show_runtime_log(True)
    try:
        if args.command == "version":
            print(__version__)
            return 0
        offline = {"replay": _replay, "adapt": adapt_cli.run}  # no config: files in, out
        if args.command in offline:
            return offline[args.command](args)
        return _command(args)
    except KeyboardInterrupt:
        return 130
    except EdgeAnomalyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    return 1  # pragma: no cover - argparse enforces a known command


if __name__ == "__main__":
    sys.exit(main())
