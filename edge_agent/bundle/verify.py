"""Opening a bundle on the gateway: signature first, then hashes, schema and channels.

Nothing in a bundle is parsed before its manifest's Ed25519 signature checks out against one
of the keys the device trusts (several, so that a signing key can be rotated without
re-flashing gateways), and no model file is used unless its SHA-256 matches the signed
manifest. The daemon's start-up, SIGHUP and over-the-air updates all go through this gate.

The bundle directory is resolved once (a ``bundles/current`` link swapped while it is being
read cannot mix two bundles) and every file in it is read without following symbolic links
(a link planted inside a bundle cannot make it read a file from elsewhere).
"""

from __future__ import annotations

import errno
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import ValidationError

from edge_agent.bundle.manifest import MANIFEST_NAME, SCHEMA_VERSION, SIGNATURE_NAME, Manifest
from edge_agent.errors import BundleError
from edge_agent.fsutil import read_no_follow


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature and file hashes have been checked, with its files in memory.

    ``path`` is the resolved directory that was read; ``digest`` the SHA-256 (hex) of the
    ``manifest.json`` bytes that were verified: it names this exact bundle (a swap compares it).
    """

    path: Path
    manifest: Manifest
    files: dict[str, bytes]
    digest: str


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise BundleError(f"{path}: trusted key not found") from None
    except IsADirectoryError:
        raise BundleError(f"{path}: trusted key is a directory, not a PEM file") from None
    except ValueError as exc:
        raise BundleError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path}: trusted key is not an Ed25519 key")
    return key


def _key_paths(trusted_keys: Path | Sequence[Path]) -> list[Path]:
    paths = [trusted_keys] if isinstance(trusted_keys, Path) else list(trusted_keys)
    if not paths:
        raise BundleError("no trusted key given: a bundle cannot be checked against nothing")
    return paths


def _read(root: Path, name: str, missing: str) -> bytes:
    """File ``name`` of the bundle, never through a symbolic link; ``missing`` if absent."""
    try:
        return read_no_follow(root, name)
    except FileNotFoundError:
        raise BundleError(missing) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BundleError(
                f"{root}: {name} is a symbolic link; a bundle holds plain files only, refusing it"
            ) from None
        raise BundleError(f"{root}: cannot read {name}: {exc.strerror or exc}") from None


def _check_signature(root: Path, raw: bytes, sig: bytes, keys: list[Path]) -> None:
    loaded = [load_public_key(k) for k in keys]
    for key in loaded:
        try:
            key.verify(sig, raw)
            return
        except InvalidSignature:
            continue
    tried = ", ".join(str(k) for k in keys)
    which = "trusted key" if len(keys) == 1 else "any of the trusted keys"
    raise BundleError(
        f"{root}: signature does not match {MANIFEST_NAME} for {which} {tried}; the bundle "
        "was modified or signed with another key"
    )


def _parse(manifest_path: Path, raw: bytes) -> Manifest:
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
        return Manifest.model_validate(doc)
    except ValidationError as exc:
        raise BundleError(f"{manifest_path}: invalid manifest:\n{exc}") from None


def verify_bundle(
    bundle_dir: Path,
    trusted_keys: Path | Sequence[Path],
    *,
    channels: list[str] | None = None,
) -> VerifiedBundle:
    """Check ``bundle_dir`` against ``trusted_keys`` and return its manifest and files.

    The signature may match any one of ``trusted_keys`` (a single path is one key).
    ``channels``, if given, are the channels the data source provides; every channel the
    model needs must be among them.
    """
    keys = _key_paths(trusted_keys)
    try:
        root = bundle_dir.resolve(strict=True)
    except (FileNotFoundError, RuntimeError):  # RuntimeError: a symlink loop
        raise BundleError(f"{bundle_dir}: bundle directory not found") from None
    if not root.is_dir():
        raise BundleError(f"{bundle_dir}: bundle directory not found")
    manifest_path = root / MANIFEST_NAME
    raw = _read(root, MANIFEST_NAME, f"{root}: no {MANIFEST_NAME}; is this a bundle directory?")
    sig = _read(root, SIGNATURE_NAME, f"{root}: unsigned bundle (no {SIGNATURE_NAME}); refusing it")
    _check_signature(root, raw, sig, keys)
    manifest = _parse(manifest_path, raw)
    files: dict[str, bytes] = {}
    for name, digest in manifest.files.items():
        if not name or any(c in name for c in "/\\\0") or name.startswith("."):
            raise BundleError(f"{manifest_path}: file name {name!r} escapes the bundle")
        data = _read(root, name, f"{root}: {name} is listed in the manifest but missing")
        if sha256_hex(data) != digest:
            raise BundleError(f"{root}: {name} does not match its SHA-256 in the manifest")
        files[name] = data
    for needed in (manifest.forest.file, manifest.autoencoder.file):
        if needed not in files:
            raise BundleError(f"{manifest_path}: {needed} is used but not listed in files")
    if channels is not None:
        missing = [c for c in manifest.channel_names if c not in channels]
        if missing:
            raise BundleError(
                f"{root}: model needs channels {missing} that the data does not have "
                f"(data has {channels})"
            )
    return VerifiedBundle(path=root, manifest=manifest, files=files, digest=sha256_hex(raw))
