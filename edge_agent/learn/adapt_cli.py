"""``python -m edge_agent adapt``: the gateway's local round on a history file, as a signed delta.

Pipeline position: the command line of the offline twin (``edge_agent.learn.offline``); the
parser is added to ``edge_agent.cli``'s and imports nothing heavy, the work is imported when
the command runs. Defaults are the gateway's ``[learn]`` defaults (``edge_agent.learn.config``),
so that without options the delta is what a gateway with default settings would send.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from edge_agent.learn import config as defaults

LOCAL_ROUND = "local"
MACHINE_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    a = sub.add_parser(
        "adapt", help="a gateway's local training round on a history file, as a signed delta",
        description="Verify a bundle, keep the rows of a history CSV the gateway would keep as "
        "normal, train the bundle's float weights on their windows as the gateway does, and "
        "write the compressed delta signed with the device key: byte for byte what the "
        "gateway sends for the same rows, round, settings and --created-at.",
    )
    a.add_argument("--bundle", type=Path, required=True, help="bundle directory (`export bundle`)")
    a.add_argument("--trust", type=Path, required=True, help="trusted Ed25519 public key (PEM)")
    a.add_argument("--data", type=Path, required=True, help="the machine's history CSV")
    a.add_argument("--key", type=Path, required=True,
                   help="the gateway's Ed25519 private key (PEM, as `export keygen` writes)")
    a.add_argument("--out", type=Path, required=True, help="the signed delta file to write")
    a.add_argument("--round", default=LOCAL_ROUND, help="round id (default %(default)s)")
    a.add_argument("--machine", help="machine id in the delta (default: the data file's name)")
    a.add_argument("--created-at", help="the delta's created_at, ISO 8601 (default: now)")
    a.add_argument("--time-col", help="timestamp column (default: timestamp/datetime/time)")
    a.add_argument("--epochs", type=int, default=defaults.DEFAULT_EPOCHS, help="local epochs")
    a.add_argument("--batch-size", type=int, default=defaults.DEFAULT_BATCH_SIZE)
    a.add_argument("--learning-rate", type=float, default=defaults.DEFAULT_LEARNING_RATE)
    a.add_argument("--prox-mu", type=float, default=0.0, help="FedProx weight (default 0)")
    a.add_argument("--topk-fraction", type=float, default=defaults.DEFAULT_TOPK_FRACTION,
                   help="share of the delta's entries sent (default %(default)s)")
    a.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    a.add_argument("--min-windows", type=int, default=defaults.DEFAULT_MIN_WINDOWS)
    a.add_argument("--max-windows", type=int, default=defaults.DEFAULT_MAX_WINDOWS)
    a.add_argument("--max-cpu-s", type=float, default=defaults.DEFAULT_MAX_CPU_S)
    a.add_argument("--chunk-rows", type=int, default=defaults.DEFAULT_CHUNK_ROWS,
                   help="buffer rows per chunk, as [learn] chunk_rows")
    a.add_argument("--sample-every-s", type=float, default=defaults.DEFAULT_SAMPLE_EVERY_S,
                   help="buffer: seconds between kept chunks, as [learn] sample_every_s")


def learn_settings(args: argparse.Namespace) -> defaults.LearnConfig:
    """The ``[learn]`` settings the options describe (ConfigError-style message if bad)."""
    from pydantic import ValidationError

    from edge_agent.errors import ConfigError

    try:
        return defaults.LearnConfig(
            epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
            prox_mu=args.prox_mu, topk_fraction=args.topk_fraction,
            min_windows=args.min_windows, max_windows=args.max_windows,
            max_cpu_s=args.max_cpu_s, chunk_rows=args.chunk_rows,
            sample_every_s=args.sample_every_s,
        )
    except ValidationError as exc:
        raise ConfigError(f"adapt options:\n{exc}") from None


def run(args: argparse.Namespace) -> int:
    from edge_agent.bundle.verify import verify_bundle
    from edge_agent.fsutil import atomic_write
    from edge_agent.learn.device_key import read_private_key
    from edge_agent.learn.offline import adapt
    from edge_agent.learn.rounds import iso_utc

    cfg = learn_settings(args)
    key = read_private_key(args.key, what="device key")
    bundle = verify_bundle(args.bundle, args.trust)
    machine = args.machine or MACHINE_SAFE.sub("-", args.data.stem).strip("-._") or "machine"
    created = args.created_at or iso_utc(time.time())
    res = adapt(bundle, args.data, cfg, key, machine_id=machine, round_id=args.round,
                created_at=created, seed=args.seed, time_col=args.time_col)
    atomic_write(args.out, res.output.payload, durable=False)
    loc = res.output.local
    print(f"{args.data}: kept {res.rows_kept} rows ({res.windows} windows); trained on "
          f"{loc.samples} for {loc.epochs_run} epoch(s), loss {loc.loss_first:.4g} -> "
          f"{loc.loss_last:.4g} in {loc.cpu_s:.1f} CPU s; delta for round {args.round} of "
          f"{bundle.manifest.model_version}: {res.output.k} entries, {len(res.output.payload)} "
          f"bytes signed as {machine}; wrote {args.out}")
    return 0
