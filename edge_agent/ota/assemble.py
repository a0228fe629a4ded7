"""A downloaded bundle becomes a slot: files written whole, flushed, then renamed into place.

Sits between staging (``edge_agent.ota.staging``) and verification. The inactive slot is
built as ``slots/<x>.new`` (every file fsynced, then the directory), the old ``slots/<x>`` is
removed and the new one renamed over it, and ``slots/`` is fsynced: a power cut leaves either
no slot ``x`` or a complete one, and the pointer never names a slot before it is complete. A
file whose content some bundle on this gateway already holds (same SHA-256) is copied from
there, never downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from edge_agent.bundle.manifest import MANIFEST_NAME
from edge_agent.fsutil import fsync_dir, read_no_follow
from edge_agent.ota.pointer import NEW_SUFFIX, OtaPaths, SlotName
from edge_agent.ota.protocol import DeploymentError, sha256_hex
from edge_agent.ota.staging import Staging

SLOT_FILE_MODE = 0o644


class LocalFiles:
    """Model files of the bundles already on this gateway, by SHA-256 (names from their
    manifests, each file hashed here and again when it is copied)."""

    def __init__(self, bundle_dirs: Iterable[Path]) -> None:
        self._where: dict[str, tuple[Path, str]] = {}
        for d in bundle_dirs:
            try:
                doc = json.loads(read_no_follow(d, MANIFEST_NAME))
            except (OSError, ValueError):
                continue
            files = doc.get("files") if isinstance(doc, dict) else None
            if isinstance(files, dict):
                for name, sha in files.items():
                    if isinstance(sha, str) and sha not in self._where and _holds(d, name, sha):
                        self._where[sha] = (d, str(name))

    def __contains__(self, sha: object) -> bool:
        return sha in self._where

    @property
    def digests(self) -> set[str]:
        return set(self._where)

    def read(self, sha: str) -> bytes:
        """The file's bytes; :class:`DeploymentError` if the copy changed since."""
        d, name = self._where[sha]
        try:
            data = read_no_follow(d, name)
        except OSError as err:
            raise DeploymentError(f"cannot copy {name} from {d}: {err}") from None
        if sha256_hex(data) != sha:
            raise DeploymentError(f"{d / name} changed on disk while the update ran")
        return data


def _holds(d: Path, name: object, sha: str) -> bool:
    if not isinstance(name, str) or "/" in name or name.startswith("."):
        return False
    try:
        return sha256_hex(read_no_follow(d, name)) == sha
    except OSError:
        return False


def assemble(
    paths: OtaPaths, target: SlotName, staging: Staging, local: LocalFiles
) -> Path:
    """Write the deployment's bundle into slot ``target``; returns the slot directory.

    Raises ``OSError`` when the disk refuses (the half-built ``.new`` directory is removed)
    and :class:`DeploymentError` when a file does not come out with its hash."""
    new = paths.slots / f"{target}{NEW_SUFFIX}"
    shutil.rmtree(new, ignore_errors=True)
    try:
        new.mkdir(parents=True)
        for name, entry in staging.deployment.files.items():
            parts = _source(entry.sha256, staging, local)
            digest = _write(new, name, parts)
            if digest != entry.sha256:
                raise DeploymentError(f"{name}: assembled file does not match its SHA-256")
        fsync_dir(new)
        final = paths.slot(target)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(new, final)
        fsync_dir(paths.slots)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return final


def _source(sha: str, staging: Staging, local: LocalFiles) -> Iterator[bytes]:
    if sha in local:
        return iter((local.read(sha),))
    return staging.read_file(sha)


def _write(directory: Path, name: str, parts: Iterator[bytes]) -> str:
    """Write ``name`` (a new plain file, never through a link) and flush it to the disk;
    returns the SHA-256 of what was written."""
    h = hashlib.sha256()
    fd = os.open(
        directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, SLOT_FILE_MODE
    )
    with os.fdopen(fd, "wb") as f:
        for part in parts:
            f.write(part)
            h.update(part)
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest()
