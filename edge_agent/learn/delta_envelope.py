"""Reading a delta's envelope: the fixed framing and the two header formats.

Part of the delta wire format (:mod:`edge_agent.learn.delta`, whose docstring draws the
envelope). :func:`machine_of` reads the only thing looked at before the signature is checked,
the machine id in the fixed framing; after the check, :func:`parse_v2` (the binary header
gateways write) and :func:`parse_v1` (the JSON header of older agents, still read during a
roll-out) return the header and the compressed body. Every refusal is a :class:`DeltaError`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from typing import Literal

from pydantic import ValidationError

from edge_agent.errors import EdgeAnomalyError
from edge_agent.learn.delta_header import (
    FORMAT_V1,
    MACHINE_ID_PATTERN,
    MAX_MACHINE_ID_BYTES,
    READABLE_FORMATS,
    DeltaHeader,
    unpack_v2,
)

MAGIC = b"EADL"
SIGNATURE_BYTES = 64  # Ed25519
MAX_HEADER_BYTES = 16 * 1024  # format 1: a header lists counts and hashes, never data
ID_LEN = struct.Struct(">B")
HEADER_LEN = struct.Struct(">I")
_PREFIX_BYTES = len(MAGIC) + 1 + ID_LEN.size  # magic, version, id_len
_MIN_HEADER_BYTES = 4  # format 2: two one-byte strings with their lengths, at least

Reason = Literal[
    "too_large", "malformed", "unknown_machine", "bad_signature", "wrong_base",
    "wrong_round", "replayed_round", "norm_bound",
]


class DeltaError(EdgeAnomalyError):
    """A delta that cannot be accepted; ``reason`` is a short code for records and metrics."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: Reason = reason


def machine_of(data: bytes) -> str:
    """The machine id from the fixed framing; nothing else is read before the signature."""
    if len(data) < _PREFIX_BYTES + 1 + _MIN_HEADER_BYTES + SIGNATURE_BYTES:
        raise DeltaError("malformed", f"{len(data)} bytes is too short for a delta envelope")
    if data[: len(MAGIC)] != MAGIC:
        raise DeltaError(
            "malformed", f"not a delta: starts with {data[: len(MAGIC)]!r}, not {MAGIC!r}"
        )
    if data[len(MAGIC)] not in READABLE_FORMATS:
        raise DeltaError(
            "malformed",
            f"delta format version {data[len(MAGIC)]}, this reader knows {READABLE_FORMATS}",
        )
    (id_len,) = ID_LEN.unpack_from(data, len(MAGIC) + 1)
    if _PREFIX_BYTES + id_len + _MIN_HEADER_BYTES + SIGNATURE_BYTES > len(data):
        raise DeltaError("malformed", f"machine id of {id_len} bytes does not fit the envelope")
    raw_id = data[_PREFIX_BYTES : _PREFIX_BYTES + id_len]
    ident = raw_id.decode("ascii", errors="replace")
    if not 1 <= id_len <= MAX_MACHINE_ID_BYTES or not re.match(MACHINE_ID_PATTERN, ident):
        raise DeltaError("malformed", f"machine id {raw_id!r} in the framing is not a machine id")
    return ident


def parse_v2(
    signed: bytes, machine: str, expected_fingerprint: str, tensor_sizes: Sequence[int] | None
) -> tuple[DeltaHeader, bytes]:
    at = _PREFIX_BYTES + len(machine)
    try:
        fields, used = unpack_v2(signed[at:])
    except ValueError as exc:
        raise DeltaError("malformed", f"header (signed, but not understood): {exc}") from None
    if fields.base_fingerprint != expected_fingerprint:  # before the layout is taken from it
        raise DeltaError(
            "wrong_base", f"delta from {machine!r} is against base {fields.base_fingerprint[:12]}… "
            f"(model {fields.model_version}), not {expected_fingerprint[:12]}…"
        )
    if tensor_sizes is None:
        raise ValueError("decode_delta: a format-2 delta needs the base's tensor_sizes")
    if fields.size != sum(tensor_sizes):
        raise DeltaError(
            "malformed", f"delta has {fields.size} parameters, the base {sum(tensor_sizes)}"
        )
    try:
        header = fields.header(machine, tensor_sizes)
    except ValueError as exc:
        raise DeltaError("malformed", f"header (signed, but not understood): {exc}") from None
    return header, signed[at + used :]


def parse_v1(signed: bytes, machine: str) -> tuple[DeltaHeader, bytes]:
    at = _PREFIX_BYTES + len(machine)
    if at + HEADER_LEN.size > len(signed):
        raise DeltaError("malformed", "envelope ends before the header length")
    (head_len,) = HEADER_LEN.unpack_from(signed, at)
    at += HEADER_LEN.size
    if head_len > MAX_HEADER_BYTES or at + head_len > len(signed):
        raise DeltaError("malformed", f"header length {head_len} does not fit the envelope")
    try:
        header = DeltaHeader.model_validate_json(signed[at : at + head_len])
    except ValidationError as exc:
        raise DeltaError("malformed", f"header (signed, but not understood):\n{exc}") from None
    if header.format != FORMAT_V1:
        raise DeltaError("malformed", f"header says format {header.format} in a format-1 envelope")
    if header.machine_id != machine:
        raise DeltaError(
            "malformed", f"header names machine {header.machine_id!r}, the framing {machine!r}"
        )
    return header, signed[at + head_len :]
