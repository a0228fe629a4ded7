"""``--publish``: the round's new run goes out to the fleet, closing the loop of ``--broker``.

Position: after ``round.finish_round`` has written the new run. The run is exported as any run
is (``export.bundle.build_bundle``: full-integer int8, the parity gate, signed with the fleet
key that announced the round) and pushed by the over-the-air path (``export publish``'s
rollout: retained chunks, a signed deployment per target, the gateways' reports followed until
each is active). Gateways then canary the model, calibrate their own thresholds on their
buffered normal windows (``edge_agent.learn.personalise``) and activate it.

Targets: ``--publish-group NAME`` (the agents' ``ota.groups``), else every registered gateway
(the ``--trust-devices`` key files), whether or not its delta made it into this round: the
model is the fleet's. An int8 model that fails the parity gate is an operator matter: the new
run stays, the error says so, and ``export bundle --force`` is the way on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_agent.ota.protocol import DEFAULT_CHUNK_BYTES
from export.errors import ExportError

PUBLISH_VARIANTS: tuple[str, ...] = ()  # the gateways of a learning fleet run the int8 model


def bundle_dir_for(args: argparse.Namespace, run: Path) -> Path:
    """Where the new bundle goes: ``--publish-bundle`` or ``NEW_RUN.bundle`` beside the run."""
    given: Path | None = args.publish_bundle
    return given if given is not None else run.with_name(run.name + ".bundle")


def publish_run(args: argparse.Namespace, run: Path, registered: list[str]) -> int:
    """Export ``run`` and roll it out; ``export publish``'s exit code (0: every target active)."""
    from export.bundle import build_bundle
    from export.ota_cli import run_publish

    if args.key is None or args.broker is None:
        raise ExportError("--publish needs --broker and --key (the fleet signing key)")
    if args.publish_group is None and not registered:
        raise ExportError("--publish: no target (no registered gateway, no --publish-group)")
    out = bundle_dir_for(args, run)
    manifest = build_bundle(run, out, args.key, variants=PUBLISH_VARIANTS,
                            overwrite=args.overwrite)  # fmt: skip
    print(f"bundle {manifest.model_version} written to {out}")
    order = argparse.Namespace(**vars(args))
    order.bundle = out
    order.machine = [] if args.publish_group is not None else list(registered)
    order.group = args.publish_group  # the rollout's target group, not the aggregators' group
    order.wave = args.publish_wave
    order.halt_on_rollback = args.publish_wave is not None
    order.expires_in = None
    order.allow_downgrade = False
    order.timeout = args.publish_timeout
    order.no_wait = False
    order.chunk_bytes = DEFAULT_CHUNK_BYTES
    return run_publish(order)


def add_publish_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--publish`` options (broker mode)."""
    g = p.add_argument_group("--publish (broker mode: export the new run and roll it out)")
    g.add_argument("--publish", action="store_true",
                   help="export the new run (int8, signed with --key) and publish it over the air")
    g.add_argument("--publish-bundle", type=Path, metavar="DIR",
                   help="bundle directory to create (default: NEW_RUN.bundle)")
    g.add_argument("--publish-group", metavar="NAME",
                   help="roll out to this group (default: every registered gateway)")
    g.add_argument("--publish-wave", type=int, metavar="N",
                   help="N gateways at a time, halting at the first rollback")
    g.add_argument("--publish-timeout", type=float, default=600.0, metavar="S",
                   help="seconds to wait for each wave to be active (default %(default)g)")
