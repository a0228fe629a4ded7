"""The signed delta wire format (edge_agent.learn.delta, .sparse): round trip, and every refusal.

Real Ed25519 keys, real zlib. The weights have the shapes of the default dense autoencoder
(5 channels x 32 steps in, 128-64-16 bottleneck, mirrored out): ~60k parameters, the size the
issue's bandwidth target is about. Their values do not matter to the format.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from typing import Literal

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.learn import delta as wire
from edge_agent.learn.delta import DeltaError, DeltaHeader, decode_delta, encode_delta
from edge_agent.learn.residual import error_feedback
from edge_agent.learn.sparse import (
    CODING_BITMAP,
    CODING_GAPS,
    SparseDelta,
    decode_indices,
    decode_varints,
    encode_indices,
    encode_varints,
    pack,
    sparsify,
    top_k_count,
)
from edge_agent.learn.weights import WeightSet

MACHINE = "compressor-07"
WINDOW_INPUTS = 5 * 32  # channels x window length
LAYERS = (WINDOW_INPUTS, 128, 64, 16, 64, 128, WINDOW_INPUTS)
FRACTION = 0.01
FP32_BYTES = 4
CREATED_AT = "2026-12-05T10:00:00Z"
MODEL_VERSION = "20261204T200015Z-2b421677"
FUZZ_CASES = 300
TARGET_RATIO = 100  # the issue: >= 100x smaller than the fp32 weights on the wire


def dense_ae(seed: int) -> WeightSet:
    rng = np.random.default_rng(seed)
    names: list[str] = []
    arrays: list[np.ndarray] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(LAYERS)):
        names += [f"dense_{i}/kernel", f"dense_{i}/bias"]
        arrays += [rng.normal(0, 0.1, (n_in, n_out)), rng.normal(0, 0.01, (n_out,))]
    return WeightSet(tuple(names), tuple(arrays))


@pytest.fixture(scope="module")
def base() -> WeightSet:
    return dense_ae(0)


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def sizes_of(weights: WeightSet) -> tuple[int, ...]:
    return tuple(int(a.size) for a in weights.arrays)


def update(base: WeightSet, seed: int = 1, scale: float = 1e-3) -> np.ndarray:
    """A delta whose magnitude differs by tensor, as a trained one does."""
    rng = np.random.default_rng(seed)
    parts = [rng.normal(0, scale * (1 + 4 * (i % 3)), a.size) for i, a in enumerate(base.arrays)]
    return np.concatenate(parts).astype(np.float32)


def make(
    base: WeightSet, key: Ed25519PrivateKey, *, fraction: float = FRACTION,
    machine: str = MACHINE, round_id: str = "r1", vec: np.ndarray | None = None,
    version: Literal[1, 2] = 2,
) -> tuple[bytes, SparseDelta]:
    sparse = sparsify(update(base) if vec is None else vec, sizes_of(base), fraction)
    payload = encode_delta(
        sparse, base=base, machine_id=machine, model_version=MODEL_VERSION,
        round_id=round_id, samples=480, epochs=2, key=key, created_at=CREATED_AT,
        version=version,
    )
    return payload, sparse


def opened(
    payload: bytes, base: WeightSet, key: Ed25519PrivateKey, **kw: object
) -> wire.DecodedDelta:
    kw.setdefault("tensor_sizes", sizes_of(base))
    return decode_delta(
        payload, public_keys={MACHINE: key.public_key()},
        expected_base_fingerprint=base.fingerprint(), **kw,  # type: ignore[arg-type]
    )


def reason(payload: bytes, base: WeightSet, key: Ed25519PrivateKey, **kw: object) -> str:
    with pytest.raises(DeltaError) as err:
        opened(payload, base, key, **kw)
    return err.value.reason


def outcome(payload: bytes, base: WeightSet, key: Ed25519PrivateKey) -> str:
    try:
        opened(payload, base, key)
    except DeltaError as exc:
        return exc.reason
    return "accepted"


def resign(signed: bytes, key: Ed25519PrivateKey) -> bytes:
    return signed + key.sign(signed)


def envelope(header: dict[str, object], body: bytes, key: Ed25519PrivateKey) -> bytes:
    """A correctly signed envelope around any header and body (a keyed but faulty device)."""
    head = wire.canonical_json(DeltaHeader.model_construct(**header))  # type: ignore[arg-type]
    ident = str(header["machine_id"]).encode()
    framing = wire.MAGIC + bytes([1, len(ident)]) + ident
    signed = framing + struct.pack(">I", len(head)) + head + body
    return resign(signed, key)


# --- round trip -------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [2, 1])
def test_round_trip_is_the_sent_vector(
    base: WeightSet, key: Ed25519PrivateKey, version: Literal[1, 2]
) -> None:
    payload, sparse = make(base, key, version=version)
    got = opened(payload, base, key)
    assert np.array_equal(got.vector, sparse.dense())
    assert got.vector.dtype == np.float32
    assert got.vector.shape == (base.size,)
    assert got.header.k == sparse.k == math.ceil(FRACTION * base.size)
    assert np.count_nonzero(got.vector) <= got.header.k
    assert got.header.machine_id == MACHINE
    assert got.header.round_id == "r1"
    assert (got.header.samples, got.header.epochs) == (480, 2)
    assert got.header.base_fingerprint == base.fingerprint()
    assert got.header.norm == pytest.approx(float(np.linalg.norm(got.vector)), rel=1e-6)
    assert got.wire_bytes == len(payload)


def test_top_k_keeps_the_largest_and_quantizes_within_half_a_step(base: WeightSet) -> None:
    v = update(base)
    sparse = sparsify(v, sizes_of(base), FRACTION)
    kept = np.abs(v[sparse.indices])
    dropped = np.delete(np.abs(v), sparse.indices)
    assert kept.min() >= dropped.max()
    assert np.all(np.diff(sparse.indices) > 0)
    step = sparse.scales[np.searchsorted(np.cumsum(sizes_of(base)), sparse.indices, "right")]
    assert np.all(np.abs(sparse.values() - v[sparse.indices]) <= step / 2 * (1 + 1e-6))


def test_residual_plus_sent_is_the_update(base: WeightSet) -> None:
    v = update(base)
    old = update(base, seed=7, scale=1e-4)
    step = error_feedback(v, old, sizes_of(base), FRACTION)
    assert np.allclose(step.residual + step.sparse.dense(), v + old, rtol=0, atol=1e-7)
    assert step.sparse.k == top_k_count(base.size, FRACTION)


def test_same_input_same_bytes(base: WeightSet, key: Ed25519PrivateKey) -> None:
    assert make(base, key)[0] == make(base, key)[0]


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_dense_selections_use_the_bitmap(
    base: WeightSet, key: Ed25519PrivateKey, fraction: float
) -> None:
    payload, sparse = make(base, key, fraction=fraction)
    assert pack(sparse)[-((base.size + 7) // 8) - 1] == CODING_BITMAP
    assert np.array_equal(opened(payload, base, key).vector, sparse.dense())


def test_index_coding_picks_the_smaller() -> None:
    size = 1000
    sparse_idx = np.array([3, 500, 999])
    assert encode_indices(sparse_idx, size)[0] == CODING_GAPS
    dense_idx = np.arange(0, size, 2)
    assert encode_indices(dense_idx, size)[0] == CODING_BITMAP
    for idx in (sparse_idx, dense_idx):
        coded = encode_indices(idx, size)
        assert np.array_equal(decode_indices(coded, size, idx.size), idx)


def test_varints_round_trip_and_refuse_non_canonical() -> None:
    values = np.array([0, 1, 127, 128, 300, 16383, 16384, 2**32 - 1], dtype=np.uint64)
    coded = encode_varints(values)
    assert coded[:4] == b"\x00\x01\x7f\x80"
    assert len(coded) == 1 + 1 + 1 + 2 + 2 + 2 + 3 + 5
    assert np.array_equal(decode_varints(coded, values.size), values)
    with pytest.raises(ValueError, match="redundant"):
        decode_varints(b"\x81\x00", 1)
    with pytest.raises(ValueError, match="expected 2 values"):
        decode_varints(b"\x01", 2)
    with pytest.raises(ValueError, match="longer than 5"):
        decode_varints(b"\xff" * 5 + b"\x01", 1)


def test_size_against_fp32(base: WeightSet, key: Ed25519PrivateKey) -> None:
    payload, _ = make(base, key)
    ratio = base.size * FP32_BYTES / len(payload)
    print(f"\n{base.size} parameters, fraction {FRACTION}: {len(payload)} bytes on the wire "
          f"(framing, header and signature included), {ratio:.1f}x smaller than fp32")
    assert ratio >= TARGET_RATIO


# --- refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [2, 1])
def test_every_flipped_byte_is_refused(
    base: WeightSet, key: Ed25519PrivateKey, version: Literal[1, 2]
) -> None:
    payload, _ = make(base, key, version=version)
    id_len_at = len(wire.MAGIC) + 1
    id_end = id_len_at + 1 + len(MACHINE)
    for i in range(len(payload)):
        bad = bytearray(payload)
        bad[i] ^= 0x01
        got = reason(bytes(bad), base, key)
        if i < id_len_at:  # magic, version
            assert got == "malformed", i
        elif i < id_end:  # the machine id's length and name: another machine's (or none)
            assert got in {"unknown_machine", "malformed"}, i
        else:
            assert got == "bad_signature", i


@pytest.mark.parametrize("version", [2, 1])
def test_wrong_key(
    base: WeightSet, key: Ed25519PrivateKey, version: Literal[1, 2]
) -> None:
    payload, _ = make(base, Ed25519PrivateKey.generate(), version=version)
    assert reason(payload, base, key) == "bad_signature"


def test_key_of_another_machine(base: WeightSet, key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    payload, _ = make(base, key)
    with pytest.raises(DeltaError) as err:
        decode_delta(payload, public_keys={MACHINE: other.public_key(), "pump-1": key.public_key()},
                     expected_base_fingerprint=base.fingerprint())
    assert err.value.reason == "bad_signature"


def test_unknown_machine(base: WeightSet, key: Ed25519PrivateKey) -> None:
    payload, _ = make(base, key, machine="pump-skid-03")
    with pytest.raises(DeltaError, match="pump-skid-03") as err:
        opened(payload, base, key)
    assert err.value.reason == "unknown_machine"


@pytest.mark.parametrize("version", [2, 1])
def test_wrong_base(
    base: WeightSet, key: Ed25519PrivateKey, version: Literal[1, 2]
) -> None:
    payload, _ = make(base, key, version=version)
    assert reason(payload, dense_ae(1), key) == "wrong_base"


@pytest.mark.parametrize("version", [2, 1])
def test_replayed_and_wrong_round(
    base: WeightSet, key: Ed25519PrivateKey, version: Literal[1, 2]
) -> None:
    payload, _ = make(base, key, round_id="r7", version=version)
    assert reason(payload, base, key, seen_rounds={(MACHINE, "r7")}) == "replayed_round"
    assert opened(payload, base, key, seen_rounds={("pump-1", "r7"), (MACHINE, "r6")})
    assert reason(payload, base, key, expected_round="r8") == "wrong_round"


def test_too_large_before_anything_else(base: WeightSet, key: Ed25519PrivateKey) -> None:
    payload, _ = make(base, key)
    assert reason(payload, base, key, max_bytes=len(payload) - 1) == "too_large"
    assert reason(b"x" * 100, base, key, max_bytes=99) == "too_large"
    assert opened(payload, base, key, max_bytes=len(payload))


def test_norm_bound(base: WeightSet, key: Ed25519PrivateKey) -> None:
    payload, sparse = make(base, key)
    norm = sparse.l2_norm()
    assert reason(payload, base, key, max_norm=norm * 0.99) == "norm_bound"
    assert opened(payload, base, key, max_norm=norm * 1.01)


@pytest.mark.parametrize("version", [2, 1])
def test_truncated_at_every_length(
    base: WeightSet, key: Ed25519PrivateKey, version: Literal[1, 2]
) -> None:
    payload, _ = make(base, key, version=version)
    for n in range(len(payload)):
        assert reason(payload[:n], base, key) in {"malformed", "bad_signature"}, n


def test_random_bytes_only_raise_delta_error(base: WeightSet, key: Ed25519PrivateKey) -> None:
    rng = np.random.default_rng(11)
    prefixes = [wire.MAGIC + bytes([v, len(MACHINE)]) + MACHINE.encode() for v in (1, 2)]
    for _ in range(FUZZ_CASES):
        junk = rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
        for data in (junk, *(prefix + junk for prefix in prefixes)):
            with pytest.raises(DeltaError):
                opened(data, base, key)


@pytest.mark.parametrize("version", [2, 1])
def test_signed_garbage_only_raises_malformed(
    base: WeightSet, key: Ed25519PrivateKey, version: Literal[1, 2]
) -> None:
    """A device with a valid key that sends nonsense: every parse step refuses it cleanly."""
    payload, _ = make(base, key, version=version)
    signed = payload[: -wire.SIGNATURE_BYTES]
    rng = np.random.default_rng(12)
    head_at = len(wire.MAGIC) + 2 + len(MACHINE)
    assert payload[len(wire.MAGIC)] == version
    reasons: set[str] = set()
    for _ in range(FUZZ_CASES):
        bad = bytearray(signed)
        for pos in rng.integers(head_at, len(bad), int(rng.integers(1, 4))):
            bad[pos] = int(rng.integers(0, 256))
        reasons.add(outcome(resign(bytes(bad), key), base, key))
    # a changed round id or count can still make sense; nothing else may get through
    assert reasons <= {"accepted", "malformed", "wrong_base", "too_large"}, reasons
    assert "malformed" in reasons
    # and truncations of the signed part, re-signed
    for n in range(head_at, len(signed), 7):
        with pytest.raises(DeltaError) as err:
            opened(resign(signed[:n], key), base, key)
        assert err.value.reason == "malformed"


def test_signed_but_inconsistent_v1(base: WeightSet, key: Ed25519PrivateKey) -> None:
    payload, sparse = make(base, key, version=1)
    header = opened(payload, base, key).header.model_dump()
    body = zlib.compress(pack(sparse), 9)
    cases = {
        "framing vs header machine": ({**header, "machine_id": "pump-1"}, body),
        "k": ({**header, "k": sparse.k + 1}, body),
        "norm": ({**header, "norm": header["norm"] * 2}, body),
        "sizes": ({**header, "tensor_sizes": (base.size,)}, body),
        "trailing data": (header, body + b"\0"),
        "two streams": (header, body + body),
        "zip bomb": (header, zlib.compress(b"\0" * 10_000_000, 9)),
        "not zlib": (header, b"\x00" * 50),
    }
    for what, (hdr, raw) in cases.items():
        data = envelope(hdr, raw, key)
        if what == "framing vs header machine":  # the framing still names MACHINE
            head = wire.canonical_json(DeltaHeader.model_construct(**hdr))
            signed = (wire.MAGIC + bytes([1, len(MACHINE)]) + MACHINE.encode()
                      + struct.pack(">I", len(head)) + head + raw)
            data = resign(signed, key)
        assert reason(data, base, key) == "malformed", what


# --- format 2 ---------------------------------------------------------------------------------
V2_FIXED = struct.Struct(">IHfIII")  # samples, epochs, norm, size, k, created_at: the layout


def v2_header(
    base: WeightSet, sparse: SparseDelta, **change: object
) -> bytes:
    """A format-2 header written from the documented layout (not with the module's code)."""
    f: dict[str, object] = {
        "model_version": MODEL_VERSION.encode(), "round_id": b"r1",
        "fingerprint": bytes.fromhex(base.fingerprint()), "samples": 480, "epochs": 2,
        "norm": sparse.l2_norm(), "size": base.size, "k": sparse.k, "created": 1_796_464_800,
    }
    f.update(change)
    mv, rid = f["model_version"], f["round_id"]
    assert isinstance(mv, bytes)
    assert isinstance(rid, bytes)
    fixed = V2_FIXED.pack(f["samples"], f["epochs"], f["norm"], f["size"], f["k"], f["created"])
    fingerprint = f["fingerprint"]
    assert isinstance(fingerprint, bytes)
    return bytes([len(mv)]) + mv + bytes([len(rid)]) + rid + fingerprint + fixed


def v2_envelope(head: bytes, body: bytes, key: Ed25519PrivateKey, machine: str = MACHINE) -> bytes:
    return resign(wire.MAGIC + bytes([2, len(machine)]) + machine.encode() + head + body, key)


def test_v2_is_the_documented_layout(base: WeightSet, key: Ed25519PrivateKey) -> None:
    payload, sparse = make(base, key)
    head = v2_header(base, sparse)
    body = zlib.compress(pack(sparse), wire.ZLIB_LEVEL)
    assert payload == v2_envelope(head, body, key)
    got = opened(payload, base, key).header
    assert (got.format, got.created_at, got.model_version) == (2, CREATED_AT, MODEL_VERSION)
    assert got.tensor_sizes == sizes_of(base)
    assert got.layout_sha256 is None
    assert len(head) == 2 + len(MODEL_VERSION) + 2 + 32 + V2_FIXED.size  # 88 bytes here


def test_v2_is_smaller_than_v1_by_the_json_header(
    base: WeightSet, key: Ed25519PrivateKey
) -> None:
    v2, _ = make(base, key)
    v1, _ = make(base, key, version=1)
    assert np.array_equal(opened(v1, base, key).vector, opened(v2, base, key).vector)
    assert opened(v1, base, key).header.format == 1
    assert len(v1) - len(v2) > 300, (len(v1), len(v2))


def test_v2_needs_the_receivers_layout(base: WeightSet, key: Ed25519PrivateKey) -> None:
    payload, _ = make(base, key)
    with pytest.raises(ValueError, match="tensor_sizes"):
        opened(payload, base, key, tensor_sizes=None)
    v1, _ = make(base, key, version=1)  # format 1's own sizes are checked against the layout
    with pytest.raises(DeltaError, match="tensor sizes") as err:
        opened(v1, base, key, tensor_sizes=(base.size - 10, 10))
    assert err.value.reason == "malformed"
    assert opened(v1, base, key, tensor_sizes=None).header.tensor_sizes == sizes_of(base)


def test_unknown_version_byte(base: WeightSet, key: Ed25519PrivateKey) -> None:
    payload, _ = make(base, key)
    signed = bytearray(payload[: -wire.SIGNATURE_BYTES])
    for version in (0, 3, 255):
        signed[len(wire.MAGIC)] = version
        with pytest.raises(DeltaError, match=f"version {version}") as err:
            opened(resign(bytes(signed), key), base, key)
        assert err.value.reason == "malformed"


def test_signed_but_inconsistent_v2(base: WeightSet, key: Ed25519PrivateKey) -> None:
    _, sparse = make(base, key)
    body = zlib.compress(pack(sparse), 9)
    ok = v2_header(base, sparse)
    assert opened(v2_envelope(ok, body, key), base, key)
    cases: dict[str, tuple[bytes, bytes, str]] = {
        "k": (v2_header(base, sparse, k=sparse.k + 1), body, "malformed"),
        "k over size": (v2_header(base, sparse, k=base.size + 1), body, "malformed"),
        "norm": (v2_header(base, sparse, norm=sparse.l2_norm() * 2), body, "malformed"),
        "size": (v2_header(base, sparse, size=base.size + 1), body, "malformed"),
        "no samples": (v2_header(base, sparse, samples=0), body, "malformed"),
        "round id": (v2_header(base, sparse, round_id=b"r 1"), body, "malformed"),
        "empty model version": (v2_header(base, sparse, model_version=b""), body, "malformed"),
        "not ascii": (v2_header(base, sparse, model_version=b"\xff"), body, "malformed"),
        "fingerprint": (v2_header(base, sparse, fingerprint=bytes(32)), body, "wrong_base"),
        "trailing data": (ok, body + b"\0", "malformed"),
        "two streams": (ok, body + body, "malformed"),
        "zip bomb": (ok, zlib.compress(b"\0" * 10_000_000, 9), "malformed"),
        "not zlib": (ok, b"\x00" * 50, "malformed"),
        "header cut": (ok[:40], b"", "malformed"),
    }
    for what, (head, raw, expected) in cases.items():
        assert reason(v2_envelope(head, raw, key), base, key) == expected, what
