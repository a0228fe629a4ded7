"""What ``python -m trainer federate`` does with its options: pick the deltas, run the round.

Position: between the option parser (``cli``) and the round's stages. Exactly one source of
updates: ``--deltas`` files, ``--broker`` (announce and collect, ``broker``) or ``--merge``
(partial sums of a split round, ``partial``). The result is a new run (``--out``) or, for
one worker of a split round, a partial (``--partial-out``).

Exit codes: 0 done; 1 the round failed (fewer than ``--min-clients`` accepted; every refusal
is listed); operator errors (missing run, no device keys, bad or conflicting options, an
output in the way) are raised as ExportError / FileExistsError, which ``trainer.cli`` prints
and turns into exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from export.errors import ExportError
from trainer.federate.collect import DeltaSource, file_sources, load_device_keys
from trainer.federate.round import RoundFailed, Tally, finish_round, tally
from trainer.federate.run_out import BaseRun, check_out_dir, load_base
from trainer.federate.settings import FederateSettings

EXIT_ROUND_FAILED = 1


def _check(args: argparse.Namespace, settings: FederateSettings) -> None:
    given = [o for o, v in (("--deltas", args.deltas), ("--broker", args.broker),
                            ("--merge", args.merge)) if v is not None]  # fmt: skip
    if len(given) != 1:
        raise ExportError(
            f"give one of --deltas DELTA..., --broker HOST[:PORT] or --merge PARTIAL... "
            f"(got {', '.join(given) or 'none'})"
        )
    if (args.out is None) == (args.partial_out is None):
        raise ExportError("give --out NEW_RUN, or --partial-out FILE for one worker of a split")
    if args.partial_out is not None and args.merge is not None:
        raise ExportError("--merge finishes a split round: it writes --out, not --partial-out")
    if args.partial_out is not None and settings.rule != "fedavg":
        raise ExportError(f"--partial-out: only fedavg splits over processes, not {settings.rule}")
    if args.merge is None and args.trust_devices is None:
        raise ExportError("--trust-devices KEYDIR is needed to verify the deltas")
    if not args.run.is_dir():
        raise ExportError(f"{args.run}: base run directory not found")
    if args.out is not None:
        check_out_dir(args.out, args.run, overwrite=args.overwrite)
    if args.publish and (args.broker is None or args.out is None or args.key is None):
        raise ExportError("--publish closes a --broker round: it needs --broker, --key and --out")


def _broker_sources(
    args: argparse.Namespace,
    settings: FederateSettings,
    base: BaseRun,
    keys: Mapping[str, Ed25519PublicKey],
) -> list[DeltaSource]:
    from export.keys import load_private_key
    from export.ota_cli import mqtt_config
    from trainer.federate.broker import broker_collect

    if (args.bundle is None) != (args.key is None):
        raise ExportError("--bundle and --key go together: they announce the round")
    if args.key is None and args.partial_out is None:
        raise ExportError("--broker needs --bundle (the fleet's current bundle) and --key")
    if args.round_timeout <= 0:
        raise ExportError(f"--round-timeout {args.round_timeout:g}: must be positive seconds")
    named = args.out if args.out is not None else args.partial_out
    spool = args.spool or named.with_name(named.name + ".deltas")
    training = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "prox_mu": args.prox_mu,
        "topk_fraction": args.topk_fraction,
        "min_windows": args.min_windows,
        "seed": args.seed,
    }
    from trainer.federate.privacy_cli import local_privacy

    if (asked := local_privacy(args)) is not None:
        training["privacy"] = asked
    got = broker_collect(
        mqtt_config(args),
        base=base,
        bundle=args.bundle,
        key=load_private_key(args.key) if args.key is not None else None,
        # A worker of a split round sees a share only: it waits for the deadline.
        registered=set(keys) if args.partial_out is None else set(),
        settings=settings,
        training=training,
        group=args.group,
        spool=spool,
        timeout_s=args.round_timeout,
    )
    how = "the deadline passed" if got.timed_out else "every registered gateway answered"
    print(f"round {settings.round_id}: {len(got.sources)} deltas spooled in {spool}; {how}")
    return got.sources


def _tally(args: argparse.Namespace, settings: FederateSettings, base: BaseRun) -> Tally:
    if args.merge is not None:
        from trainer.federate.partial import merge_partials

        return merge_partials(
            args.merge,
            settings=settings,
            base_fingerprint=base.fingerprint,
            size=base.weights.size,
        )
    keys = load_device_keys(args.trust_devices)
    if args.broker is not None:
        sources = _broker_sources(args, settings, base, keys)
    else:
        sources = file_sources(args.deltas)
    return tally(base, sources, keys, settings)


def run_command(args: argparse.Namespace, settings: FederateSettings) -> int:
    t0 = time.perf_counter()
    _check(args, settings)
    base = load_base(args.run)
    counted = _tally(args, settings, base)
    if args.partial_out is not None:
        from trainer.federate.partial import write_partial

        write_partial(
            args.partial_out, counted, round_id=settings.round_id, base_fingerprint=base.fingerprint
        )
        print(f"partial of round {settings.round_id}: {len(counted.accepted)} of "
              f"{len(counted.clients)} deltas accepted, written to {args.partial_out}")  # fmt: skip
        return 0
    try:
        report = finish_round(base, counted, settings, args.out, overwrite=args.overwrite, t0=t0)
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
    if report.privacy is not None:
        from trainer.federate.privacy_cli import privacy_line

        summary["privacy"] = privacy_line(report.privacy)
    print(json.dumps(summary, indent=2))
    if not args.publish:
        return 0
    from trainer.federate.publish import publish_run

    return publish_run(args, args.out, sorted(load_device_keys(args.trust_devices)))
