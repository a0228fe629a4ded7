"""The signed, compressed model delta a gateway sends upstream (the delta wire format).

Pipeline position: fleet learning (issue 11). After a local round the gateway subtracts the
global weights from its trained ones, adds the residual it kept from the previous round and
sparsifies the sum (``edge_agent.learn.residual``, ``edge_agent.learn.sparse``); this module
frames, compresses and signs the result with the gateway's own Ed25519 key
(``edge_agent.learn.device_key``). The outbox carries it on ``<prefix>/<machine>/delta``; the
desk aggregator (``trainer.federate``) opens it with :func:`decode_delta`.

Envelope (all integers big-endian)::

    b"EADL" | version u8 | id_len u8 | machine id (ascii, id_len bytes)
    | header | body (zlib level 9) | Ed25519 signature (64)

    version 2 (written): header = the binary fields of ``delta_header`` (~60 bytes + strings)
    version 1 (still read): header = header_len u32 | canonical JSON (~450 bytes)

The signature covers every byte before it. The machine id sits in the fixed framing to pick
the key to check it with (format 1's header repeats it and must agree). :func:`decode_delta`
checks, in order: the size limit; the framing (magic, version, machine id syntax); that the
machine is known; the signature. Only then is anything else parsed: the header, base
fingerprint, size, round, the body against the header's counts, and the norm of the values
actually sent. Every refusal is a :class:`DeltaError` with a ``reason``. Format 2 leaves the
tensor sizes out (the base fingerprint covers the layout): the receiver passes its base's.
Reading the framing and either header is :mod:`edge_agent.learn.delta_envelope`'s part.
The body is :func:`edge_agent.learn.sparse.pack` output: per-tensor float32 scales, int8
codes, index coding; see that module.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from edge_agent.learn.delta_envelope import (
    HEADER_LEN,
    ID_LEN,
    MAGIC,
    SIGNATURE_BYTES,
    DeltaError,
    machine_of,
    parse_v1,
    parse_v2,
)
from edge_agent.learn.delta_header import (
    FORMAT_V1,
    FORMAT_V2,
    FORMAT_VERSION,
    MACHINE_ID_PATTERN,
    MAX_MACHINE_ID_BYTES,
    MAX_ROUND_ID_CHARS,
    READABLE_FORMATS,
    ROUND_ID_PATTERN,
    DeltaHeader,
    canonical_json,
    layout_sha256,
    pack_v2,
    utc_now,
)
from edge_agent.learn.sparse import SparseDelta, max_packed_bytes, pack, unpack
from edge_agent.learn.weights import WeightSet

__all__ = [  # the header's names are re-exported: callers import the format from here
    "DEFAULT_MAX_BYTES", "FORMAT_VERSION", "MACHINE_ID_PATTERN", "MAX_MACHINE_ID_BYTES",
    "MAX_ROUND_ID_CHARS", "READABLE_FORMATS", "ROUND_ID_PATTERN", "DecodedDelta", "DeltaError",
    "DeltaHeader", "canonical_json", "decode_delta", "encode_delta", "layout_sha256",
]

DEFAULT_MAX_BYTES = 4 * 1024 * 1024  # a delta of 1 % of a 60k-parameter model is ~1.3 KB
DEFAULT_MAX_PARAMETERS = 16 * 1024 * 1024  # dense size a decoder allocates at most (64 MiB)
NORM_REL_TOLERANCE = 1e-4  # header norm vs the norm recomputed from the body (float32 sums)
ZLIB_LEVEL = 9


@dataclass(frozen=True)
class DecodedDelta:
    """An accepted delta: its header, what was sent, and the dense float32 vector."""

    header: DeltaHeader
    sparse: SparseDelta
    vector: np.ndarray  # float32, header.size long, WeightSet.flat() order
    wire_bytes: int  # length of the signed envelope


def encode_delta(
    sparse: SparseDelta,
    *,
    base: WeightSet,
    machine_id: str,
    model_version: str,
    round_id: str,
    samples: int,
    epochs: int,
    key: Ed25519PrivateKey,
    created_at: str | None = None,
    version: Literal[1, 2] = FORMAT_VERSION,
) -> bytes:
    """The signed envelope for ``sparse``, a delta against ``base``. Deterministic for a given
    ``created_at`` (Ed25519 signatures are). ``version`` 1 writes the old JSON header (for
    tests of the desk's reader; gateways write 2)."""
    sizes = tuple(int(a.size) for a in base.arrays)
    if sparse.tensor_sizes != sizes:
        raise ValueError(
            f"sparse delta tensor sizes {sparse.tensor_sizes} are not the base's {sizes}"
        )
    try:
        header = DeltaHeader(
            format=version, machine_id=machine_id, model_version=model_version,
            base_fingerprint=base.fingerprint(), round_id=round_id, samples=samples,
            epochs=epochs, norm=sparse.l2_norm(), size=sparse.size, k=sparse.k,
            tensor_sizes=sizes, created_at=created_at or utc_now(),
            layout_sha256=layout_sha256(base) if version == FORMAT_V1 else None,
        )
        if version == FORMAT_V1:
            head = HEADER_LEN.pack(len(json := canonical_json(header))) + json
        else:
            head = pack_v2(header)
    except (ValidationError, struct.error, OverflowError, UnicodeEncodeError) as exc:
        raise ValueError(f"cannot make a delta header:\n{exc}") from None
    ident = machine_id.encode("ascii")
    signed = b"".join([
        MAGIC, bytes([version]), ID_LEN.pack(len(ident)), ident, head,
        zlib.compress(pack(sparse), ZLIB_LEVEL),
    ])
    return signed + key.sign(signed)


def decode_delta(
    data: bytes,
    *,
    public_keys: Mapping[str, Ed25519PublicKey],
    expected_base_fingerprint: str,
    tensor_sizes: Sequence[int] | None = None,
    seen_rounds: Container[tuple[str, str]] = (),
    expected_round: str | None = None,
    expected_size: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_norm: float = math.inf,
) -> DecodedDelta:
    """Verify and open a delta; :class:`DeltaError` for anything not acceptable.

    ``public_keys`` maps machine ids to their registered keys; ``tensor_sizes`` is the base's
    layout (parameters per tensor, ``WeightSet`` order), needed for format 2, checked against
    format 1's header; ``seen_rounds`` holds the ``(machine_id, round_id)`` pairs already
    accepted; ``max_norm`` bounds the L2 norm of the values sent, recomputed from the body.
    """
    if len(data) > max_bytes:
        raise DeltaError(
            "too_large", f"delta of {len(data)} bytes is over the {max_bytes}-byte limit"
        )
    machine = machine_of(data)
    key = public_keys.get(machine)
    if key is None:
        raise DeltaError("unknown_machine", f"no registered key for machine {machine!r}")
    signed, signature = data[:-SIGNATURE_BYTES], data[-SIGNATURE_BYTES:]
    try:
        key.verify(signature, signed)
    except InvalidSignature:
        raise DeltaError(
            "bad_signature", f"signature does not match machine {machine!r}'s key: modified, "
            "or signed by another key"
        ) from None
    if signed[len(MAGIC)] == FORMAT_V2:
        header, body = parse_v2(signed, machine, expected_base_fingerprint, tensor_sizes)
    else:
        header, body = parse_v1(signed, machine)
    if header.base_fingerprint != expected_base_fingerprint:
        raise DeltaError(
            "wrong_base", f"delta from {machine!r} is against base {header.base_fingerprint[:12]}… "
            f"(model {header.model_version}), not {expected_base_fingerprint[:12]}…"
        )
    if expected_size is not None and header.size != expected_size:
        raise DeltaError(
            "malformed", f"delta has {header.size} parameters, the base {expected_size}"
        )
    if tensor_sizes is not None and header.tensor_sizes != tuple(tensor_sizes):
        raise DeltaError(
            "malformed", f"delta's tensor sizes {header.tensor_sizes} are not the base's "
            f"{tuple(tensor_sizes)}"
        )
    if header.size > DEFAULT_MAX_PARAMETERS:
        raise DeltaError("too_large", f"delta claims {header.size} parameters")
    if expected_round is not None and header.round_id != expected_round:
        raise DeltaError(
            "wrong_round", f"delta from {machine!r} answers round {header.round_id!r}, "
            f"not {expected_round!r}"
        )
    if (machine, header.round_id) in seen_rounds:
        raise DeltaError("replayed_round", f"{machine!r} already sent round {header.round_id!r}")
    sparse = _open_body(body, header)
    norm = sparse.l2_norm()
    if not math.isclose(norm, header.norm, rel_tol=NORM_REL_TOLERANCE, abs_tol=1e-12):
        raise DeltaError("malformed", f"header norm {header.norm} but the values' norm is {norm}")
    if norm > max_norm:
        raise DeltaError(
            "norm_bound", f"delta norm {norm:.6g} from {machine!r} is over {max_norm:.6g}"
        )
    return DecodedDelta(header, sparse, sparse.dense(), len(data))


def _open_body(body: bytes, header: DeltaHeader) -> SparseDelta:
    limit = max_packed_bytes(header.size, len(header.tensor_sizes), header.k)
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(body, limit + 1)
    except zlib.error as exc:
        raise DeltaError("malformed", f"body does not inflate ({exc})") from None
    if len(raw) > limit or inflate.unconsumed_tail or not inflate.eof or inflate.unused_data:
        raise DeltaError("malformed", f"body is not one zlib stream of at most {limit} bytes")
    try:
        return unpack(raw, header.size, header.tensor_sizes, header.k)
    except ValueError as exc:
        raise DeltaError("malformed", f"body: {exc}") from None
