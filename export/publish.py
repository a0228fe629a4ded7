"""``export publish``, first half: a verified bundle as retained chunks and signed deployments.

Sits between ``export bundle`` (which signs a bundle on the desk) and the gateways' OTA
updater (``edge_agent.ota``). The bundle is verified exactly as a gateway would verify it,
with the public half of the signing key, so a broken bundle is never put on the broker. Its
files (``manifest.json`` and ``manifest.sig`` included) become content-addressed retained
chunks (``edge_agent.ota.protocol``), published and acknowledged before any deployment names
them, so a gateway that reads a deployment always finds its chunks.
"""

from __future__ import annotations

import datetime as dt
import secrets
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME
from edge_agent.bundle.verify import verify_bundle
from edge_agent.events import iso
from edge_agent.fsutil import read_no_follow
from edge_agent.ota.protocol import (
    Deployment,
    Targets,
    chunk_topic,
    file_entry,
    group_deployment_topic,
    machine_deployment_topic,
    sha256_hex,
    sign_deployment,
    split_chunks,
)
from export.errors import ExportError

ID_RANDOM_BYTES = 3  # six hex digits after the time: unique enough for one desk's releases


@dataclass(frozen=True)
class Release:
    """A bundle verified with the signing key's public half; every file's bytes in memory."""

    path: Path
    model_version: str
    created_at: str
    manifest_sha256: str
    files: dict[str, bytes]

    @property
    def total_bytes(self) -> int:
        return sum(len(b) for b in self.files.values())


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_release(bundle_dir: Path, key: Ed25519PrivateKey) -> Release:
    """Verify ``bundle_dir`` against ``key``'s public half; BundleError/ExportError if not."""
    with tempfile.TemporaryDirectory(prefix="export-publish-") as tmp:
        pub = Path(tmp) / "signing.pub"
        pub.write_bytes(public_pem(key))
        verified = verify_bundle(bundle_dir, pub)
    root = verified.path
    manifest = read_no_follow(root, MANIFEST_NAME)
    signature = read_no_follow(root, SIGNATURE_NAME)
    # Read again for publishing: it must still be the manifest and signature just verified.
    if sha256_hex(manifest) != verified.digest:
        raise ExportError(f"{root}: {MANIFEST_NAME} changed while it was being published")
    try:
        key.public_key().verify(signature, manifest)
    except InvalidSignature:
        raise ExportError(
            f"{root}: {SIGNATURE_NAME} changed while it was being published"
        ) from None
    files = {MANIFEST_NAME: manifest, SIGNATURE_NAME: signature, **verified.files}
    return Release(
        path=root,
        model_version=verified.manifest.model_version,
        created_at=verified.manifest.created_at,
        manifest_sha256=verified.digest,
        files=files,
    )


def new_deployment_id(now: float) -> str:
    """``20260314T101500Z-3fa91c``: sortable by time, unique by its random tail."""
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(ID_RANDOM_BYTES)}"


def chunk_messages(prefix: str, release: Release, chunk_bytes: int) -> Iterator[tuple[str, bytes]]:
    """Every chunk of every file as ``(topic, payload)``; a file two names share is sent once.

    An empty file has one chunk entry (the hash of no bytes) but nothing on the broker: an
    empty retained payload is MQTT's way of deleting a retained message."""
    seen: set[str] = set()
    for data in release.files.values():
        digest = sha256_hex(data)
        if digest in seen or not data:
            continue
        seen.add(digest)
        for i, chunk in enumerate(split_chunks(data, chunk_bytes)):
            yield chunk_topic(prefix, digest, i), chunk


@dataclass(frozen=True)
class Order:
    """What every deployment of one ``publish`` shares; only the targets differ."""

    deployment_id: str
    issued_at: float
    expires_in_s: float | None
    allow_downgrade: bool
    chunk_bytes: int


def make_deployment(release: Release, order: Order, targets: Targets) -> Deployment:
    expires = None if order.expires_in_s is None else order.issued_at + order.expires_in_s
    return Deployment(
        deployment_id=order.deployment_id,
        model_version=release.model_version,
        manifest_sha256=release.manifest_sha256,
        created_at=release.created_at,
        issued_at=iso(order.issued_at) or "",
        expires_at=iso(expires),
        targets=targets,
        allow_downgrade=order.allow_downgrade,
        chunk_bytes=order.chunk_bytes,
        files={name: file_entry(data, order.chunk_bytes) for name, data in release.files.items()},
    )


def machine_deployments(
    prefix: str, release: Release, order: Order, key: Ed25519PrivateKey, machines: Sequence[str]
) -> list[tuple[str, bytes]]:
    """One signed deployment per machine, each on that machine's own topic."""
    if not machines:
        return []
    first = make_deployment(release, order, Targets(machines=[machines[0]]))
    # The file list is the same for every machine: hash the bundle once, not once per machine.
    return [
        (
            machine_deployment_topic(prefix, m),
            sign_deployment(first.model_copy(update={"targets": Targets(machines=[m])}), key),
        )
        for m in machines
    ]


def group_deployment(
    prefix: str, release: Release, order: Order, key: Ed25519PrivateKey, group: str
) -> tuple[str, bytes]:
    deployment = make_deployment(release, order, Targets(groups=[group]))
    return group_deployment_topic(prefix, group), sign_deployment(deployment, key)
