"""``python -m trainer federate``: the options of a federated round, and its exit codes.

``trainer.cli`` adds the subparser (``add_arguments``) and hands the parsed arguments to
``run``. Exit codes: 0 a new run was written; 1 the round failed (fewer than
``--min-clients`` deltas accepted: every refusal is listed); 2 an operator error (missing
base run, no device keys, a bad option, an output directory in the way), raised as an
exception that ``trainer.cli`` prints as ``error: ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from export.errors import ExportError
from trainer.federate.settings import DEFAULT_CLIP_MULTIPLE, DEFAULT_MAX_NORM, FederateSettings

EXIT_ROUND_FAILED = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, required=True, help="base run (the model the fleet has)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--deltas", type=Path, nargs="+", metavar="DELTA", help="delta files the gateways sent"
    )
    src.add_argument(
        "--broker",
        metavar="HOST[:PORT]",
        help="collect the deltas from the fleet's broker (not available yet)",
    )
    p.add_argument(
        "--trust-devices",
        type=Path,
        required=True,
        metavar="KEYDIR",
        help="registered gateway keys: KEYDIR/<machine id>.pub (PEM Ed25519)",
    )
    p.add_argument("--out", type=Path, required=True, help="new run directory to create")
    p.add_argument("--round", required=True, metavar="ID", help="round id the deltas answer")
    p.add_argument(
        "--rule",
        choices=["fedavg", "trimmed_mean", "median"],
        default="fedavg",
        help="aggregation: sample-weighted mean (default), coordinate-wise trimmed mean "
        "or median (robust to a few bad gateways; memory grows with the fleet)",
    )
    p.add_argument(
        "--trim", type=float, metavar="F", help="trimmed_mean: share cut at each end (0.1)"
    )
    clip = p.add_mutually_exclusive_group()
    clip.add_argument("--clip-norm", type=float, metavar="X", help="clip every update to L2 norm X")
    clip.add_argument(
        "--clip-multiple",
        type=float,
        metavar="M",
        help=f"clip to M x the median update norm (default {DEFAULT_CLIP_MULTIPLE:g})",
    )
    clip.add_argument("--no-clip", action="store_true", help="do not clip updates")
    p.add_argument(
        "--server-opt",
        choices=["none", "avgm", "adam"],
        default="none",
        help="server optimizer: none (add the mean), avgm (FedAvgM), adam (FedAdam)",
    )
    p.add_argument(
        "--server-lr", type=float, metavar="LR", help="server learning rate (1; adam 0.01)"
    )
    p.add_argument(
        "--min-clients", type=int, default=1, metavar="K", help="accepted deltas needed (1)"
    )
    p.add_argument(
        "--max-norm",
        type=float,
        default=DEFAULT_MAX_NORM,
        metavar="X",
        help="refuse a delta whose L2 norm is above X (default %(default)g)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def settings_from(args: argparse.Namespace) -> FederateSettings:
    """The round's settings from the options; ExportError lists every bad one."""
    doc: dict[str, object] = {
        "round_id": args.round,
        "rule": args.rule,
        "server_opt": args.server_opt,
        "min_clients": args.min_clients,
        "max_norm": args.max_norm,
    }
    if args.trim is not None:
        doc["trim_fraction"] = args.trim
    if args.server_lr is not None:
        doc["server_lr"] = args.server_lr
    if args.clip_norm is not None:
        doc["clip_norm"] = args.clip_norm
    elif args.no_clip:
        doc["clip_multiple"] = None
    elif args.clip_multiple is not None:
        doc["clip_multiple"] = args.clip_multiple
    try:
        return FederateSettings.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']} (got {e['input']!r})"
            for e in exc.errors()
        )
        raise ExportError(f"federate options: {problems}") from None


def run(args: argparse.Namespace) -> int:
    from trainer.federate.collect import file_sources, load_device_keys
    from trainer.federate.round import RoundFailed, run_round

    settings = settings_from(args)
    if args.broker is not None:
        raise ExportError(
            "--broker: collecting deltas over MQTT is not implemented yet; "
            "pass the delta files with --deltas"
        )
    if not args.run.is_dir():
        raise ExportError(f"{args.run}: base run directory not found")
    keys = load_device_keys(args.trust_devices)
    try:
        report = run_round(
            args.run,
            file_sources(args.deltas),
            keys,
            settings,
            args.out,
            overwrite=args.overwrite,
        )
    except RoundFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        for c in exc.clients:
            if c.status == "refused":
                print(f"  refused {c.source}: {c.message}", file=sys.stderr)
        return EXIT_ROUND_FAILED
    summary = {
        "run": str(args.out),
        "round": report.round_id,
        "accepted": report.accepted,
        "refused": {c.source: c.reason for c in report.clients if c.status == "refused"},
        "samples": report.samples,
        "bytes_received": report.bytes_received,
        "step_norm": report.step_norm,
        "alert_threshold": report.alert_threshold,
    }
    print(json.dumps(summary, indent=2))
    return 0
