"""``python -m edge_agent``: the gateway's command line.

Subcommands: ``replay`` (the device pipeline over a file) and ``version``. Errors in input
(data, bundle, config) print one clear message and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_agent import __version__
from edge_agent.errors import EdgeAnomalyError

EXIT_INPUT_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge_agent", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "replay",
        help="score a CSV through the device pipeline",
        description="Verify a bundle, then score every row of a CSV exactly as the gateway "
        "would, writing timestamp, stage, score, p_anomaly, alert per input row.",
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
    sub.add_parser("version", help="print the agent version")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "version":
            print(__version__)
            return 0
        if args.command == "replay":
            from edge_agent.replay import replay

            res = replay(
                args.bundle,
                args.data,
                args.out,
                args.trust,
                time_col=args.time_col,
                num_threads=args.threads,
            )
            n = res.stage.size
            print(
                f"scored {n} rows: {int((res.stage == 2).sum())} reached stage 2, "
                f"{int(res.alert.sum())} in alert; wrote {args.out}"
            )
            return 0
    except EdgeAnomalyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    return 1  # pragma: no cover - argparse enforces a known command


if __name__ == "__main__":
    sys.exit(main())
