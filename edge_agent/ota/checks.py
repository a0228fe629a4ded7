"""The gates a deployment passes: before any byte is downloaded, and once the slot is built.

Used by the updater (``edge_agent.ota.updater``). :func:`precheck` reads only the signed
deployment (already opened with the trusted keys): is it for this machine, still valid,
newer than every release this gateway ever ran, small enough, and is there room for it.
:func:`verify_slot` checks the assembled slot as the agent checks any bundle
(``verify_bundle``: signature, file hashes) and then what an update adds: it is the very
bundle the deployment names, newer than the floor (from the signed manifest itself), its
channels delivered by this gateway's sources, its window features computed by this agent.
A refusal raises :class:`~edge_agent.ota.protocol.DeploymentError` with the reason the report
carries.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_agent.bundle.verify import VerifiedBundle, verify_bundle
from edge_agent.detect.windows import FEATURE_SET_VERSION
from edge_agent.errors import BundleError
from edge_agent.ota.protocol import Deployment, DeploymentError, parse_time

BYTES_PER_MIB = 1 << 20
# Room kept free beside an update (the outbox, the log, the next chunk): an update may use
# the disk only while this much stays free.
DISK_MARGIN_BYTES = 2 * BYTES_PER_MIB
# Staging holds the chunks and the slot a copy of them: at most twice the bundle.
DISK_COPIES = 2


class DiskRefusal(DeploymentError):
    """The disk cannot take the update: not the deployment's fault, so it may come again."""


@dataclass(frozen=True)
class Gateway:
    """What the gateway knows when a deployment arrives."""

    machine_id: str
    groups: Sequence[str]
    floor: str | None  # created_at of the newest release ever activated
    floor_version: str | None
    max_bundle_bytes: int
    delivered_channels: Sequence[str] | None  # None: a replay source, the file decides


def precheck(dep: Deployment, gw: Gateway, now: float, disk: Path) -> None:
    """Refuse ``dep`` before downloading it; returns if it may be downloaded."""
    if not dep.targets.includes(gw.machine_id, gw.groups):
        raise DeploymentError(
            f"deployment {dep.deployment_id} targets machines {dep.targets.machines} and "
            f"groups {dep.targets.groups}, not this machine ({gw.machine_id}, groups "
            f"{list(gw.groups)})"
        )
    if dep.expired(now):
        raise DeploymentError(f"deployment {dep.deployment_id} expired at {dep.expires_at}")
    older_than_floor(dep.model_version, dep.created_at, dep.allow_downgrade, gw)
    if dep.total_bytes > gw.max_bundle_bytes:
        raise DeploymentError(
            f"bundle of {dep.total_bytes / BYTES_PER_MIB:.1f} MiB is over the "
            f"{gw.max_bundle_bytes / BYTES_PER_MIB:.1f} MiB limit ([ota] max_bundle_mb)"
        )
    free = shutil.disk_usage(disk).free
    need = DISK_COPIES * dep.total_bytes + DISK_MARGIN_BYTES
    if free < need:
        raise DiskRefusal(
            f"disk full: the update needs {need / BYTES_PER_MIB:.1f} MiB free under {disk}, "
            f"{free / BYTES_PER_MIB:.1f} MiB are"
        )


def older_than_floor(version: str, created_at: str, allow_downgrade: bool, gw: Gateway) -> None:
    """Refuse a release not strictly newer than the floor, unless the signed deployment says
    it may go back (TUF: a replayed older release must not be installable)."""
    if gw.floor is None or allow_downgrade:
        return
    try:
        newer = parse_time(created_at) > parse_time(gw.floor)
    except ValueError:
        raise DeploymentError(
            f"release {version}: created_at {created_at!r} is not a time"
        ) from None
    if not newer:
        raise DeploymentError(
            f"release {version} (made {created_at}) is not newer than {gw.floor_version} "
            f"(made {gw.floor}), the newest this gateway has run: refused as a rollback "
            "(the desk can force it with a deployment that allows a downgrade)"
        )


def verify_slot(
    slot: Path, dep: Deployment, trusted_keys: Sequence[Path], gw: Gateway
) -> VerifiedBundle:
    """Check the assembled slot; returns the verified bundle."""
    try:
        bundle = verify_bundle(slot, trusted_keys)
    except BundleError as exc:
        raise DeploymentError(str(exc)) from None
    m = bundle.manifest
    if bundle.digest != dep.manifest_sha256:
        raise DeploymentError(
            f"the bundle's manifest is not the one deployment {dep.deployment_id} names"
        )
    older_than_floor(m.model_version, m.created_at, dep.allow_downgrade, gw)
    if gw.delivered_channels is not None:
        missing = [c for c in m.channel_names if c not in gw.delivered_channels]
        if missing:
            raise DeploymentError(
                f"model {m.model_version} needs channels {missing} that no source of this "
                f"gateway delivers (sources deliver {sorted(gw.delivered_channels)})"
            )
    if m.window.feature_set != FEATURE_SET_VERSION:
        raise DeploymentError(
            f"model {m.model_version} was trained on window feature set "
            f"{m.window.feature_set}, this agent computes feature set {FEATURE_SET_VERSION}"
        )
    return bundle
