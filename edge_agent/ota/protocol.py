"""The over-the-air wire contract between ``export publish`` (desk) and the gateway.

Everything travels over the MQTT broker the fleet already has:

- ``<prefix>/ota/machine/<machine>/deployment`` and ``<prefix>/ota/group/<group>/deployment``
  (retained): a signed :class:`Deployment`, so a gateway offline during the push finds it when
  it reconnects. The payload is the 64-byte Ed25519 signature followed by the deployment's
  JSON; the signature is checked against the gateway's trusted keys before the JSON is parsed.
- ``<prefix>/ota/blob/<sha256>/<index>`` (retained): chunk ``index`` of the file whose SHA-256
  is ``sha256``. Content-addressed, so a file two bundles share is stored once and a gateway
  that already holds it downloads nothing. Each chunk's own SHA-256 is listed in the signed
  deployment, so a tampered chunk is caught as soon as it arrives.
- ``<prefix>/<machine>/model`` (retained, from the gateway): a :class:`Report` of the update
  state; ``export fleet`` and staged rollouts read it.

A deployment names the bundle by its manifest's SHA-256; the bundle's own signature and file
hashes are checked again by ``verify_bundle`` before anything is loaded. Releases are ordered
by the signed manifest's ``created_at``: a gateway activates only a release strictly newer
than every release it ever activated, unless the signed deployment says ``allow_downgrade``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field, ValidationError, model_validator

from edge_agent.config.strict import StrictModel
from edge_agent.errors import BundleError
from edge_agent.events import UpdateState  # the update steps, shared with model_update events

PROTOCOL_VERSION: Literal[1] = 1
SIGNATURE_BYTES = 64  # Ed25519
DEFAULT_CHUNK_BYTES = 64 * 1024  # small enough for any broker's default packet limit
MAX_CHUNK_BYTES = 1024 * 1024
MAX_DEPLOYMENT_BYTES = 256 * 1024  # a deployment lists hashes, never data
REPORT_SUFFIX = "model"  # <prefix>/<machine>/model
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # machine ids and group names: topic-safe
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class DeploymentError(BundleError):
    """A deployment or its bundle cannot be accepted: unsigned, tampered, not for us, too old."""


# --- topics -----------------------------------------------------------------------------------
def machine_deployment_topic(prefix: str, machine_id: str) -> str:
    return f"{prefix}/ota/machine/{machine_id}/deployment"


def group_deployment_topic(prefix: str, group: str) -> str:
    return f"{prefix}/ota/group/{group}/deployment"


def chunk_topic(prefix: str, sha256: str, index: int) -> str:
    return f"{prefix}/ota/blob/{sha256}/{index}"


def blob_filter(prefix: str, sha256: str) -> str:
    """Every chunk of one file."""
    return f"{prefix}/ota/blob/{sha256}/+"


def report_topic(prefix: str, machine_id: str) -> str:
    return f"{prefix}/{machine_id}/{REPORT_SUFFIX}"


def reports_filter(prefix: str) -> str:
    return f"{prefix}/+/{REPORT_SUFFIX}"


def parse_chunk_topic(prefix: str, topic: str) -> tuple[str, int] | None:
    """``(sha256, index)`` of a chunk topic, or None if ``topic`` is not one."""
    head = f"{prefix}/ota/blob/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head) :].split("/")
    if len(parts) != 2 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


# --- the deployment ---------------------------------------------------------------------------
class FileEntry(StrictModel):
    sha256: str = Field(pattern=SHA256_PATTERN, description="SHA-256 of the whole file")
    size: int = Field(ge=0, description="Bytes")
    chunks: list[str] = Field(description="SHA-256 of each chunk, in order")


class Targets(StrictModel):
    machines: list[str] = Field(default_factory=list, description="Machine ids targeted")
    groups: list[str] = Field(default_factory=list, description="Groups targeted")

    @model_validator(mode="after")
    def _some(self) -> Targets:
        import re

        if not self.machines and not self.groups:
            raise ValueError("a deployment targets at least one machine or group")
        bad = [n for n in [*self.machines, *self.groups] if not re.match(NAME_PATTERN, n)]
        if bad:
            raise ValueError(f"target names {bad} are not topic-safe ({NAME_PATTERN})")
        return self

    def includes(self, machine_id: str, groups: Sequence[str]) -> bool:
        return machine_id in self.machines or any(g in self.groups for g in groups)


class Deployment(StrictModel):
    """One signed order: run this bundle on these targets."""

    protocol: Literal[1] = PROTOCOL_VERSION
    deployment_id: str = Field(min_length=1, max_length=64, pattern=NAME_PATTERN)
    model_version: str
    manifest_sha256: str = Field(pattern=SHA256_PATTERN)
    created_at: str = Field(description="The manifest's created_at: the release order")
    issued_at: str
    expires_at: str | None = Field(default=None, description="Refused after this time")
    targets: Targets
    allow_downgrade: bool = Field(
        default=False, description="May replace a newer release (signed, so only the desk can)"
    )
    chunk_bytes: int = Field(gt=0, le=MAX_CHUNK_BYTES)
    files: dict[str, FileEntry] = Field(description="Every bundle file, manifest and signature")

    @model_validator(mode="after")
    def _consistent(self) -> Deployment:
        for name, f in self.files.items():
            if "/" in name or "\\" in name or name.startswith(".") or not name:
                raise ValueError(f"file name {name!r} escapes the bundle")
            if len(f.chunks) != chunk_count(f.size, self.chunk_bytes):
                raise ValueError(f"{name}: {len(f.chunks)} chunk hashes for {f.size} bytes")
        return self

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and parse_time(self.expires_at) <= now


def chunk_count(size: int, chunk_bytes: int) -> int:
    return max(1, -(-size // chunk_bytes))


def split_chunks(data: bytes, chunk_bytes: int) -> list[bytes]:
    n = chunk_count(len(data), chunk_bytes)
    return [data[i * chunk_bytes : (i + 1) * chunk_bytes] for i in range(n)]


def file_entry(data: bytes, chunk_bytes: int) -> FileEntry:
    return FileEntry(
        sha256=sha256_hex(data),
        size=len(data),
        chunks=[sha256_hex(c) for c in split_chunks(data, chunk_bytes)],
    )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_time(stamp: str) -> float:
    """ISO 8601 (``Z`` or an offset) to epoch seconds; naive stamps are taken as UTC."""
    t = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def sign_deployment(deployment: Deployment, key: Ed25519PrivateKey) -> bytes:
    """The retained payload: signature, then the JSON it signs."""
    body = json.dumps(deployment.model_dump(mode="json"), separators=(",", ":")).encode()
    return key.sign(body) + body


def open_deployment(payload: bytes, trusted: Sequence[Ed25519PublicKey]) -> Deployment:
    """Check the signature against any trusted key, then parse. Nothing is parsed before."""
    if len(payload) > MAX_DEPLOYMENT_BYTES:
        raise DeploymentError(
            f"deployment of {len(payload)} bytes is over the {MAX_DEPLOYMENT_BYTES}-byte limit"
        )
    if len(payload) <= SIGNATURE_BYTES:
        raise DeploymentError("deployment too short to hold a signature: unsigned")
    sig, body = payload[:SIGNATURE_BYTES], payload[SIGNATURE_BYTES:]
    for key in trusted:
        try:
            key.verify(sig, body)
            break
        except InvalidSignature:
            continue
    else:
        raise DeploymentError(
            "deployment signature does not match any trusted key: modified, or signed with an "
            "untrusted key"
        )
    try:
        return Deployment.model_validate_json(body)
    except ValidationError as exc:
        raise DeploymentError(f"invalid deployment (signed, but not understood):\n{exc}") from None


# --- the report -------------------------------------------------------------------------------
class Progress(StrictModel):
    bytes: int = Field(ge=0, description="Bytes of the bundle held in staging")
    total: int = Field(ge=0, description="Bytes of the whole bundle")


class Report(StrictModel):
    """The gateway's update state, retained on ``<prefix>/<machine>/model``."""

    machine_id: str
    groups: list[str] = Field(default_factory=list)
    active: str | None = Field(description="Model version scoring now (None: waiting)")
    previous: str | None = Field(default=None, description="Version in the other slot")
    state: UpdateState
    reason: str | None = Field(default=None, description="Why: for rejected and rolled_back")
    deployment_id: str | None = None
    candidate: str | None = Field(default=None, description="Version being installed")
    progress: Progress | None = None
    canary: dict[str, float | int | str | bool | None] | None = Field(
        default=None, description="The canary's figures for the latest candidate"
    )
    updated_at: str
    agent_version: str

    def to_json(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":")).encode()
