"""Every refusal of a deployment, each with its reason: before the download (signature, target,
expiry, an older release replayed, size, a full disk) and once the slot is built (an edited
manifest, an untrusted key, another bundle than named, channels, the feature kernel)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from disk import fill
from ota_desk import MACHINE, created_at, deployment

from edge_agent.ota.checks import DiskRefusal, Gateway, precheck, verify_slot
from edge_agent.ota.protocol import (
    Deployment,
    DeploymentError,
    open_deployment,
    sign_deployment,
)
from export.keys import keygen, load_private_key

CHANNELS = ["pressure_bar", "motor_current_a", "oil_temp_c", "flow_m3min", "vibration_rms_mms"]
MIB = 1 << 20


def gateway(*, floor: str | None = None, max_mb: float = 64.0,
            channels: Sequence[str] | None = CHANNELS) -> Gateway:
    return Gateway(machine_id=MACHINE, groups=["line-2"], floor=floor, floor_version="v-floor",
                   max_bundle_bytes=int(max_mb * MIB), delivered_channels=channels)


def dep_of(bundle: Path, keys: Path, **kw: object) -> Deployment:
    return deployment(bundle, load_private_key(keys / "signing.key"), **kw)[0]  # type: ignore[arg-type]


def test_a_deployment_for_us_passes(bundle: Path, keys: Path, tmp_path: Path) -> None:
    precheck(dep_of(bundle, keys), gateway(), time.time(), tmp_path)
    precheck(dep_of(bundle, keys, machines=(), groups=("line-2",)), gateway(), time.time(),
             tmp_path)


def test_an_unsigned_or_foreign_deployment_is_not_even_parsed(
    bundle: Path, keys: Path, tmp_path: Path
) -> None:
    dep = dep_of(bundle, keys)
    trusted = [load_private_key(keys / "signing.key").public_key()]
    good = sign_deployment(dep, load_private_key(keys / "signing.key"))
    assert open_deployment(good, trusted) == dep
    other, _ = keygen(tmp_path / "k")
    with pytest.raises(DeploymentError, match="does not match any trusted key"):
        open_deployment(sign_deployment(dep, load_private_key(other)), trusted)
    edited = good.replace(b'"allow_downgrade":false', b'"allow_downgrade":true ')
    assert edited != good
    with pytest.raises(DeploymentError, match="does not match any trusted key"):
        open_deployment(edited, trusted)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"machines": ("press-8",)}, r"targets machines \['press-8'\] and groups \[\], not this"),
        ({"machines": (), "groups": ("line-3",)}, r"groups \['line-3'\], not this machine"),
        ({"expires_in_s": -1.0}, r"expired at "),
    ],
)
def test_not_for_us_or_expired(
    bundle: Path, keys: Path, tmp_path: Path, kw: dict[str, object], expected: str
) -> None:
    with pytest.raises(DeploymentError, match=expected):
        precheck(dep_of(bundle, keys, **kw), gateway(), time.time(), tmp_path)


def test_an_older_or_the_same_release_is_a_rollback_unless_allowed(
    bundle: Path, variants: dict[str, Path], keys: Path, tmp_path: Path
) -> None:
    gw = gateway(floor=created_at(bundle))
    for old in (variants["older"], bundle):
        with pytest.raises(DeploymentError, match=r"not newer than v-floor .*as a rollback"):
            precheck(dep_of(old, keys), gw, time.time(), tmp_path)
    precheck(dep_of(variants["older"], keys, allow_downgrade=True), gw, time.time(), tmp_path)
    precheck(dep_of(variants["newer"], keys), gw, time.time(), tmp_path)


def test_oversized_and_full_disk(bundle: Path, keys: Path, small_disk: Path) -> None:
    dep = dep_of(bundle, keys)
    with pytest.raises(DeploymentError, match=r"MiB is over the 0\.1 MiB limit"):
        precheck(dep, gateway(max_mb=0.1), time.time(), small_disk)
    precheck(dep, gateway(), time.time(), small_disk)  # an empty 4 MiB disk has room
    filler = fill(small_disk)
    with pytest.raises(DiskRefusal, match="disk full: the update needs"):
        precheck(dep, gateway(), time.time(), small_disk)
    filler.unlink()


def slot_of(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "slot"
    shutil.copytree(bundle, dst)
    return dst


def test_the_built_slot_is_checked_like_any_bundle_and_more(
    bundle: Path, variants: dict[str, Path], keys: Path, tmp_path: Path
) -> None:
    trust = [keys / "signing.pub"]
    good = verify_slot(slot_of(variants["newer"], tmp_path), dep_of(variants["newer"], keys),
                       trust, gateway(floor=created_at(bundle)))
    assert good.manifest.model_version == "v-newer"

    cases = {
        "foreign": "signature does not match manifest.json",
        "channels": r"needs channels \['spindle_rpm'\] that no source of this gateway delivers",
        "features": "trained on window feature set",
    }
    for name, expected in cases.items():
        dep = dep_of(variants["newer"], keys).model_copy(
            update={"manifest_sha256": _digest(variants[name])})
        with pytest.raises(DeploymentError, match=expected):
            verify_slot(slot_of(variants[name], tmp_path / name), dep, trust, gateway())


def test_an_edited_manifest_and_a_swapped_bundle_are_refused(
    variants: dict[str, Path], keys: Path, tmp_path: Path
) -> None:
    trust = [keys / "signing.pub"]
    dep = dep_of(variants["newer"], keys)
    edited = slot_of(variants["newer"], tmp_path / "edited")
    doc = json.loads((edited / "manifest.json").read_text())
    doc["threshold"]["alert_threshold"] *= 10
    (edited / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(DeploymentError, match="signature does not match"):
        verify_slot(edited, dep, trust, gateway())
    other = slot_of(variants["alerting"], tmp_path / "other")  # signed, but not the one named
    with pytest.raises(DeploymentError, match=r"not the one deployment .* names"):
        verify_slot(other, dep, trust, gateway())


def test_an_older_manifest_is_refused_even_if_the_deployment_lies(
    bundle: Path, variants: dict[str, Path], keys: Path, tmp_path: Path
) -> None:
    dep = dep_of(variants["older"], keys).model_copy(update={"created_at": "2099-01-01T00:00:00Z"})
    with pytest.raises(DeploymentError, match="refused as a rollback"):
        verify_slot(slot_of(variants["older"], tmp_path), dep, [keys / "signing.pub"],
                    gateway(floor=created_at(bundle)))


def _digest(bundle: Path) -> str:
    import hashlib

    return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
