"""``python -m trainer federate``: the options of a federated round, and its exit codes.

``trainer.cli`` adds the subparser (``add_arguments``) and hands the parsed arguments to
``run``. Exit codes: 0 a new run was written; 1 the round failed (fewer than
``--min-clients`` deltas accepted: every refusal is listed); 2 an operator error (missing
base run, no device keys, a bad option, an output directory in the way), raised as an
exception that ``trainer.cli`` prints as ``error: ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError

from export.errors import ExportError
from export.ota_cli import add_broker_options
from trainer.federate.privacy_cli import add_privacy_arguments, apply_central_privacy
from trainer.federate.publish import add_publish_arguments
from trainer.federate.settings import (
    DEFAULT_CLIP_MULTIPLE,
    DEFAULT_GROUP,
    DEFAULT_MAX_NORM,
    DEFAULT_ROUND_TIMEOUT_S,
    FederateSettings,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, required=True, help="base run (the model the fleet has)")
    p.add_argument(
        "--deltas",
        type=Path,
        nargs="+",
        metavar="DELTA",
        help="delta files the gateways sent (or --broker to announce the round and collect)",
    )
    p.add_argument(
        "--trust-devices",
        type=Path,
        metavar="KEYDIR",
        help="registered gateway keys: KEYDIR/<machine id>.pub (PEM Ed25519)",
    )
    p.add_argument("--out", type=Path, help="new run directory to create")
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="PARTIAL",
        help="finish a split round: add the partial sums several aggregators wrote",
    )
    p.add_argument(
        "--partial-out",
        type=Path,
        metavar="FILE",
        help="write this aggregator's partial sums (fedavg) instead of a run, for --merge",
    )
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
    _add_broker_arguments(p)
    add_privacy_arguments(p)


def _add_broker_arguments(p: argparse.ArgumentParser) -> None:
    from edge_agent.learn import config as learn

    b = p.add_argument_group("--broker mode (announce the round, collect the fleet's deltas)")
    b.add_argument(
        "--bundle",
        type=Path,
        help="the fleet's current bundle, exported from --run (its model_version is announced)",
    )
    b.add_argument(
        "--key",
        type=Path,
        help="fleet signing key (signing.key): with --bundle, this process announces the round "
        "(in a split round, one process announces and the others only collect)",
    )
    b.add_argument(
        "--round-timeout",
        type=float,
        default=DEFAULT_ROUND_TIMEOUT_S,
        metavar="S",
        help="seconds the round stays open (default %(default)g); it closes earlier when "
        "every registered gateway has answered",
    )
    b.add_argument(
        "--group",
        default=DEFAULT_GROUP,
        help="MQTT v5 shared-subscription group of the aggregators (default %(default)s)",
    )
    b.add_argument(
        "--spool", type=Path, help="directory for the received deltas (default: OUT.deltas)"
    )
    b.add_argument(
        "--epochs",
        type=int,
        default=learn.DEFAULT_EPOCHS,
        help="local epochs (default %(default)d)",
    )
    b.add_argument(
        "--batch-size",
        type=int,
        default=learn.DEFAULT_BATCH_SIZE,
        help="local batch size (default %(default)d)",
    )
    b.add_argument(
        "--learning-rate",
        type=float,
        default=learn.DEFAULT_LEARNING_RATE,
        help="local Adam learning rate (default %(default)g)",
    )
    b.add_argument("--prox-mu", type=float, default=0.0, help="FedProx proximal weight (0: off)")
    b.add_argument(
        "--topk-fraction",
        type=float,
        default=learn.DEFAULT_TOPK_FRACTION,
        help="share of delta entries the gateways send (default %(default)g)",
    )
    b.add_argument(
        "--min-windows",
        type=int,
        default=learn.DEFAULT_MIN_WINDOWS,
        help="fewest buffered windows a gateway needs to take part (default %(default)d)",
    )
    b.add_argument("--seed", type=int, default=0, help="local shuffling seed (default 0)")
    add_broker_options(b, required=False)  # type: ignore[arg-type]
    add_publish_arguments(p)


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
    apply_central_privacy(args, doc)
    try:
        return FederateSettings.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']} (got {e['input']!r})"
            for e in exc.errors()
        )
        raise ExportError(f"federate options: {problems}") from None


def run(args: argparse.Namespace) -> int:
    """Run the subcommand (``trainer.federate.command``); the exit code."""
    from trainer.federate.command import run_command

    return run_command(args, settings_from(args))
