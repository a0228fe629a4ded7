"""Signing a bundle: hash its files into the manifest and sign the manifest with Ed25519.

The one implementation of bundle signing. ``export bundle`` signs the bundle it packs with it;
``export sign`` re-signs an existing bundle directory, after an engineer edited its manifest by
hand (a threshold, the alert policy) or replaced a file, and can stamp it as a new release.
Needs no trainer run directory and imports no TensorFlow.

A new release gets a ``created_at`` strictly later than the old one: gateways activate only a
release newer than every release they ever activated (``edge_agent.ota.protocol``), so a
re-signed bundle without ``new_release`` keeps its place in that order and is refused by a
gateway that already runs it. ``manifest.json`` and ``manifest.sig`` are each replaced
atomically; a crash between the two leaves a manifest that no longer matches its signature,
which every gateway refuses, and signing again repairs it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from edge_agent.bundle.manifest import MANIFEST_NAME, SCHEMA_VERSION, SIGNATURE_NAME, Manifest
from edge_agent.fsutil import atomic_write, read_no_follow
from export.errors import ExportError, describe_invalid
from export.keys import load_private_key

log = logging.getLogger("export.sign")

# Releases are ordered by whole seconds: a new one that lands in the old one's second (or
# before it, after a clock step) moves to the old one plus this.
RELEASE_STEP = dt.timedelta(seconds=1)


def utc_stamp(t: dt.datetime) -> str:
    """``created_at`` as written in manifests: UTC, whole seconds, ``Z``."""
    return t.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_stamp(stamp: str) -> dt.datetime | None:
    """A manifest's ``created_at`` as an aware UTC time; ``None`` if it is not ISO 8601."""
    try:
        t = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def next_release_stamp(old: str, now: dt.datetime | None = None) -> str:
    """``now`` in whole UTC seconds, or ``old`` plus one second if now is not later than it."""
    t = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(microsecond=0)
    previous = parse_stamp(old)
    if previous is not None and t <= previous:
        t = previous.replace(microsecond=0) + RELEASE_STEP
    return utc_stamp(t)


def file_digests(bundle_dir: Path, names: Iterable[str]) -> dict[str, str]:
    """SHA-256 (hex) of each named file in ``bundle_dir``, read without following links."""
    digests: dict[str, str] = {}
    for name in sorted(names):
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ExportError(f"{bundle_dir}: file name {name!r} in files escapes the bundle")
        if name in (MANIFEST_NAME, SIGNATURE_NAME):
            raise ExportError(f"{bundle_dir}: {name} cannot list itself in files")
        try:
            data = read_no_follow(bundle_dir, name)
        except FileNotFoundError:
            raise ExportError(
                f"{bundle_dir}: {name} is listed in the manifest's files but missing"
            ) from None
        except OSError as exc:
            # ELOOP for a symlink, EISDIR...: the gateway would refuse it the same way.
            raise ExportError(
                f"{bundle_dir}: {name} is not a plain file ({exc.strerror}); "
                "a bundle holds regular files only"
            ) from None
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


def manifest_bytes(manifest: Manifest) -> bytes:
    """The exact bytes that are signed and written as ``manifest.json``."""
    return (json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n").encode()


def write_signed(bundle_dir: Path, manifest: Manifest, key: Ed25519PrivateKey) -> bytes:
    """Write ``manifest.json`` and its signature into ``bundle_dir``; returns the signed bytes.

    The caller has filled ``manifest.files`` with :func:`file_digests` of that directory.
    """
    for needed in (manifest.forest.file, manifest.autoencoder.file):
        if needed not in manifest.files:
            raise ExportError(
                f"{bundle_dir / MANIFEST_NAME}: {needed} is used by the model but not listed "
                "in files; a gateway would refuse the bundle"
            )
    raw = manifest_bytes(manifest)
    atomic_write(bundle_dir / MANIFEST_NAME, raw)
    atomic_write(bundle_dir / SIGNATURE_NAME, key.sign(raw))
    return raw


def read_manifest(bundle_dir: Path) -> Manifest:
    """The bundle's manifest, validated as a gateway would (its signature is not checked)."""
    if not bundle_dir.is_dir():
        raise ExportError(f"{bundle_dir}: bundle directory not found")
    path = bundle_dir / MANIFEST_NAME
    try:
        doc = json.loads(read_no_follow(bundle_dir, MANIFEST_NAME))
    except FileNotFoundError:
        raise ExportError(
            f"{bundle_dir}: no {MANIFEST_NAME}; is this a bundle directory?"
        ) from None
    except OSError as exc:
        raise ExportError(f"{path}: cannot read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: not JSON ({exc})") from None
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if version != SCHEMA_VERSION:
        raise ExportError(
            f"{path}: schema_version {version!r} is not the one this export writes "
            f"({SCHEMA_VERSION}); gateways would refuse it"
        )
    try:
        return Manifest.model_validate(doc)
    except ValidationError as exc:
        raise ExportError(describe_invalid(path, "manifest", exc)) from None


def sign_manifest(
    bundle_dir: Path,
    key_path: Path,
    *,
    new_release: bool = False,
    model_version: str | None = None,
) -> Manifest:
    """Re-hash every file the manifest lists, optionally stamp a new release, and sign.

    Files in the directory that the manifest does not list are left alone and unsigned (the
    gateway never reads them). Returns the manifest as written.
    """
    key = load_private_key(key_path)
    old = read_manifest(bundle_dir)
    update: dict[str, object] = {"files": file_digests(bundle_dir, old.files)}
    if model_version is not None:
        if not model_version.strip():
            raise ExportError("--model-version must not be empty")
        update["model_version"] = model_version
    if new_release:
        update["created_at"] = next_release_stamp(old.created_at)
    manifest = Manifest.model_validate({**old.model_dump(), **update})
    for name, digest in manifest.files.items():
        if old.files[name] != digest:
            log.info("%s: contents changed, new SHA-256 %s", name, digest[:12])
    if manifest.created_at != old.created_at:
        log.info("new release: created_at %s -> %s", old.created_at, manifest.created_at)
    write_signed(bundle_dir, manifest, key)
    return manifest
