"""The privacy options of ``python -m trainer federate``, and what they turn into.

Position: between the option parser (``cli``) and the round (``settings``, ``broker``).
Central DP at the desk (``--dp-noise-multiplier Z --dp-clip C [--dp-delta D]``) becomes
``FederateSettings.privacy`` with ``clip_norm = C`` (``trainer.federate.privacy``); local DP
asked of every gateway in a ``--broker`` round (``--local-dp-noise-multiplier Z
--local-dp-clip C``) becomes the announcement's ``privacy`` (``edge_agent.learn.privacy``).
Both are off unless given. Bad combinations are operator errors (``ExportError``, exit 2).
"""

from __future__ import annotations

import argparse

from export.errors import ExportError
from trainer.federate.privacy import DEFAULT_DP_DELTA, PrivacyReport


def add_privacy_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("differential privacy (off unless given; docs/fleet-learning.md)")
    g.add_argument(
        "--dp-noise-multiplier", type=float, metavar="Z", help="central DP: clip every update "
        "to --dp-clip, average with equal weights and add Gaussian noise of std Z x C to the sum",
    )
    g.add_argument(
        "--dp-clip", type=float, metavar="C", help="central DP: the L2 clip bound (fixed; "
        "replaces --clip-norm / --clip-multiple / --no-clip)",
    )
    g.add_argument(
        "--dp-delta", type=float, metavar="D",
        help=f"central DP: delta of the (epsilon, delta) reported (default {DEFAULT_DP_DELTA:g})",
    )
    g.add_argument(
        "--local-dp-noise-multiplier", type=float, metavar="Z", help="--broker: ask every "
        "gateway to clip its update to --local-dp-clip and add noise of std Z x C itself",
    )
    g.add_argument(
        "--local-dp-clip", type=float, metavar="C", help="--broker: the gateways' L2 clip bound"
    )


def apply_central_privacy(args: argparse.Namespace, doc: dict[str, object]) -> None:
    """Put ``--dp-*`` into the settings document ``doc`` (clip bound and privacy section);
    ``--local-dp-*`` are checked here too, before anything runs."""
    local_privacy(args)
    z, clip, delta = args.dp_noise_multiplier, args.dp_clip, args.dp_delta
    if z is None and clip is None and delta is None:
        return
    if z is None or clip is None:
        raise ExportError("central DP needs both --dp-noise-multiplier Z and --dp-clip C")
    if args.clip_norm is not None or args.clip_multiple is not None or args.no_clip:
        raise ExportError(
            "--dp-clip is the clip bound of a central-DP round: drop --clip-norm, "
            "--clip-multiple and --no-clip"
        )
    if args.partial_out is not None or args.merge is not None:
        raise ExportError("a central-DP round runs in one process: no --partial-out or --merge")
    privacy: dict[str, object] = {"clip_norm": clip, "noise_multiplier": z}
    if delta is not None:
        privacy["delta"] = delta
    doc["clip_norm"] = clip
    doc.pop("clip_multiple", None)
    doc["privacy"] = privacy


def local_privacy(args: argparse.Namespace) -> dict[str, float] | None:
    """The announcement's ``privacy`` from ``--local-dp-*`` (None: not asked)."""
    z, clip = args.local_dp_noise_multiplier, args.local_dp_clip
    if z is None and clip is None:
        return None
    if z is None or clip is None:
        raise ExportError(
            "local DP needs both --local-dp-noise-multiplier Z and --local-dp-clip C"
        )
    if args.broker is None:
        raise ExportError("--local-dp-* go into a --broker round's announcement")
    return {"clip_norm": clip, "noise_multiplier": z}


def privacy_line(report: PrivacyReport) -> dict[str, object]:
    """The privacy figures of the printed summary."""
    return {
        "epsilon": report.epsilon,
        "delta": report.delta,
        "rounds": f"{report.private_rounds} of {report.lineage_rounds} with noise",
        "noise_std_mean": report.noise_std_mean,
    }
