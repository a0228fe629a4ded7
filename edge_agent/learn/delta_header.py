"""The signed header of a model delta: who sent it, against which base, how the body is laid out.

Pipeline position: fleet learning (issue 11), part of the delta wire format
(``edge_agent.learn.delta``, which frames, signs and checks it; see ``docs/fleet-learning.md``).
The header sits between the envelope's fixed framing and the compressed body, covered by the
gateway's signature; nothing in it is read before that signature checks out. Two encodings:

- format 1 (the first gateways): canonical JSON (sorted keys, no spaces, ASCII) behind a u32
  length, every field below by name, ~450 bytes;
- format 2 (what gateways write now): fixed binary fields, big-endian, ~60 bytes plus the two
  strings. The layout hash and the tensor sizes are not sent: the base fingerprint covers the
  tensor names, shapes and values, so a receiver that holds the base (it must, to check the
  fingerprint) has both; :func:`unpack_v2` takes the sizes from it.

Format 2 header::

    model_version_len u8 | model_version (ascii) | round_id_len u8 | round_id (ascii)
    | base fingerprint (32 raw bytes, SHA-256) | samples u32 | epochs u16 | norm f32
    | size u32 | k u32 | created_at u32 (whole seconds since 1970-01-01 UTC)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from edge_agent.config.strict import StrictModel
from edge_agent.learn.weights import WeightSet

FORMAT_V1: Literal[1] = 1
FORMAT_V2: Literal[2] = 2
FORMAT_VERSION: Literal[2] = FORMAT_V2  # what encode_delta writes
READABLE_FORMATS = (FORMAT_V1, FORMAT_V2)  # what decode_delta reads (old agents in a roll-out)
MAX_MACHINE_ID_BYTES = 64  # as AgentConfig.machine_id
MACHINE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # topic-safe, as AgentConfig.machine_id
ROUND_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
MAX_ROUND_ID_CHARS = 64
MAX_SHORT_STRING_BYTES = 255  # a u8 length prefix (model_version in format 2)
SHA256_HEX = r"^[0-9a-f]{64}$"
SHA256_BYTES = 32
UTC_STAMP = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"
UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# samples u32, epochs u16, norm f32, size u32, k u32, created_at u32 (seconds, until 2106)
_V2_FIXED = struct.Struct(">IHfIII")
_U8 = struct.Struct(">B")


class DeltaHeader(StrictModel):
    """Who sent the delta, against which base, and how the body is laid out (signed)."""

    format: Literal[1, 2] = Field(description="Delta format version (the envelope's version byte)")
    machine_id: str = Field(
        max_length=MAX_MACHINE_ID_BYTES, pattern=MACHINE_ID_PATTERN,
        description="The gateway that trained and signed it",
    )
    model_version: str = Field(
        min_length=1, max_length=MAX_SHORT_STRING_BYTES, description="Base bundle's model_version"
    )
    base_fingerprint: str = Field(
        pattern=SHA256_HEX, description="WeightSet.fingerprint() of the base weights"
    )
    round_id: str = Field(
        max_length=MAX_ROUND_ID_CHARS, pattern=ROUND_ID_PATTERN,
        description="The aggregation round this delta answers",
    )
    samples: int = Field(ge=1, description="Local windows trained on (the FedAvg weight)")
    epochs: int = Field(ge=1, description="Local epochs run")
    norm: float = Field(ge=0, allow_inf_nan=False, description="L2 norm of the sent values")
    size: int = Field(ge=1, description="Dense parameter count")
    k: int = Field(ge=1, description="Entries sent (top-k)")
    tensor_sizes: tuple[int, ...] = Field(
        min_length=1, description="Parameters per tensor, WeightSet order (one scale each); "
        "format 2: the receiver's base layout, not sent",
    )
    layout_sha256: str | None = Field(
        default=None, pattern=SHA256_HEX,
        description="SHA-256 of the tensor names and shapes (format 1 only: the base "
        "fingerprint covers the layout)",
    )
    created_at: str = Field(
        pattern=UTC_STAMP,
        description="When the gateway made it (ISO 8601 UTC, Z; format 2: whole seconds)",
    )

    @model_validator(mode="after")
    def _counts_agree(self) -> DeltaHeader:
        if min(self.tensor_sizes) < 1 or sum(self.tensor_sizes) != self.size:
            raise ValueError(f"tensor_sizes {self.tensor_sizes} do not sum to size {self.size}")
        if self.k > self.size:
            raise ValueError(f"k {self.k} is larger than size {self.size}")
        if self.format == FORMAT_V1 and self.layout_sha256 is None:
            raise ValueError("a format-1 header carries layout_sha256")
        return self


def layout_sha256(weights: WeightSet) -> str:
    """SHA-256 (hex) of the tensor names and shapes, in order."""
    digest = hashlib.sha256()
    for name, shape in zip(weights.names, weights.shapes, strict=True):
        digest.update(name.encode("utf-8") + b"\0" + ",".join(map(str, shape)).encode() + b"\0")
    return digest.hexdigest()


def canonical_json(header: DeltaHeader) -> bytes:
    """Format 1's header bytes."""
    return json.dumps(
        header.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
    ).encode("ascii")


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime(UTC_FORMAT)


def epoch_seconds(stamp: str) -> int:
    """Whole seconds since 1970 of an ISO 8601 UTC stamp (``...Z``; fractions dropped)."""
    when = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return int(when.timestamp())


def pack_v2(header: DeltaHeader) -> bytes:
    """Format 2's header bytes (the machine id is in the framing, not repeated here)."""
    version, round_id = header.model_version.encode("ascii"), header.round_id.encode("ascii")
    return b"".join([
        _U8.pack(len(version)), version, _U8.pack(len(round_id)), round_id,
        bytes.fromhex(header.base_fingerprint),
        _V2_FIXED.pack(header.samples, header.epochs, header.norm, header.size, header.k,
                       epoch_seconds(header.created_at)),
    ])


def _short_string(data: bytes, at: int, what: str) -> tuple[str, int]:
    if at + _U8.size > len(data):
        raise ValueError(f"header ends before the {what}'s length")
    n = data[at]
    at += _U8.size
    if n == 0 or at + n > len(data):
        raise ValueError(f"{what} of {n} bytes does not fit the header")
    raw = data[at : at + n]
    if not raw.isascii():
        raise ValueError(f"{what} {raw!r} is not ASCII")
    return raw.decode("ascii"), at + n


@dataclass(frozen=True)
class V2Fields:
    """A format-2 header as read, before it is checked against the receiver's base."""

    model_version: str
    round_id: str
    base_fingerprint: str
    samples: int
    epochs: int
    norm: float
    size: int
    k: int
    created_at: int  # seconds since 1970 UTC

    def header(self, machine_id: str, tensor_sizes: Sequence[int]) -> DeltaHeader:
        """The typed header, the layout taken from the base; ``ValueError`` naming the field."""
        stamp = dt.datetime.fromtimestamp(self.created_at, dt.UTC).strftime(UTC_FORMAT)
        try:
            return DeltaHeader(
                format=FORMAT_V2, machine_id=machine_id, model_version=self.model_version,
                base_fingerprint=self.base_fingerprint, round_id=self.round_id,
                samples=self.samples, epochs=self.epochs, norm=self.norm, size=self.size,
                k=self.k, tensor_sizes=tuple(int(n) for n in tensor_sizes), created_at=stamp,
            )
        except ValidationError as exc:
            raise ValueError(f"header fields:\n{exc}") from None


def unpack_v2(data: bytes) -> tuple[V2Fields, int]:
    """Read a format-2 header at the start of ``data``: its fields and how many bytes it took;
    ``ValueError`` naming the field at fault."""
    model_version, at = _short_string(data, 0, "model_version")
    round_id, at = _short_string(data, at, "round_id")
    if at + SHA256_BYTES + _V2_FIXED.size > len(data):
        raise ValueError(f"header of {len(data)} bytes ends inside its fixed fields")
    fingerprint = data[at : at + SHA256_BYTES].hex()
    at += SHA256_BYTES
    samples, epochs, norm, size, k, created = _V2_FIXED.unpack_from(data, at)
    fields = V2Fields(model_version, round_id, fingerprint, samples, epochs, norm, size, k,
                      created)
    return fields, at + _V2_FIXED.size
