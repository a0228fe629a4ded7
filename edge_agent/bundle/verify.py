"""Opening a bundle on the gateway: signature first, then hashes, schema and channels.

Nothing in a bundle is parsed before its manifest's Ed25519 signature checks out against a
key the device trusts, and no model file is used unless its SHA-256 matches the signed
manifest. This is the gate that over-the-air updates will go through as well.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import ValidationError

from edge_agent.bundle.manifest import MANIFEST_NAME, SCHEMA_VERSION, SIGNATURE_NAME, Manifest
from edge_agent.errors import BundleError


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature and file hashes have been checked, with its files in memory."""

    path: Path
    manifest: Manifest
    files: dict[str, bytes]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise BundleError(f"{path}: trusted key not found") from None
    except ValueError as exc:
        raise BundleError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path}: trusted key is not an Ed25519 key")
    return key


def verify_bundle(
    bundle_dir: Path, trusted_key: Path, *, channels: list[str] | None = None
) -> VerifiedBundle:
    """Check ``bundle_dir`` against ``trusted_key`` and return its manifest and files.

    ``channels``, if given, are the channels the data source provides; every channel the
    model needs must be among them.
    """
    key = load_public_key(trusted_key)
    manifest_path = bundle_dir / MANIFEST_NAME
    sig_path = bundle_dir / SIGNATURE_NAME
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: bundle directory not found")
    if not manifest_path.is_file():
        raise BundleError(f"{bundle_dir}: no {MANIFEST_NAME}; is this a bundle directory?")
    if not sig_path.is_file():
        raise BundleError(f"{bundle_dir}: unsigned bundle (no {SIGNATURE_NAME}); refusing it")
    raw = manifest_path.read_bytes()
    try:
        key.verify(sig_path.read_bytes(), raw)
    except InvalidSignature:
        raise BundleError(
            f"{bundle_dir}: signature does not match {MANIFEST_NAME} for trusted key "
            f"{trusted_key}; the bundle was modified or signed with another key"
        ) from None
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path}: not JSON ({exc})") from None
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{manifest_path}: schema_version {version!r} is not supported by this agent "
            f"(supports {SCHEMA_VERSION}); update the agent or re-export the bundle"
        )
    try:
        manifest = Manifest.model_validate(doc)
    except ValidationError as exc:
        raise BundleError(f"{manifest_path}: invalid manifest:\n{exc}") from None
    files: dict[str, bytes] = {}
    for name, digest in manifest.files.items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise BundleError(f"{manifest_path}: file name {name!r} escapes the bundle")
        p = bundle_dir / name
        if not p.is_file():
            raise BundleError(f"{bundle_dir}: {name} is listed in the manifest but missing")
        data = p.read_bytes()
        if sha256_hex(data) != digest:
            raise BundleError(f"{bundle_dir}: {name} does not match its SHA-256 in the manifest")
        files[name] = data
    for needed in (manifest.forest.file, manifest.autoencoder.file):
        if needed not in files:
            raise BundleError(f"{manifest_path}: {needed} is used but not listed in files")
    if channels is not None:
        missing = [c for c in manifest.channel_names if c not in channels]
        if missing:
            raise BundleError(
                f"{bundle_dir}: model needs channels {missing} that the data does not have "
                f"(data has {channels})"
            )
    return VerifiedBundle(path=bundle_dir, manifest=manifest, files=files)
