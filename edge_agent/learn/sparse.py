"""Top-k sparsification, int8 quantization and index coding of a flat model delta.

Pipeline position: fleet learning (issue 11), between the error-feedback step
(``edge_agent.learn.residual``) and the signed envelope (``edge_agent.learn.delta``). Everything
here works on flat float32 vectors in ``WeightSet.flat()`` order plus the tensor sizes of that
order; the envelope compresses the bytes :func:`pack` makes and signs them.

- Top-k: the ``k = ceil(fraction * size)`` entries of largest magnitude, indices ascending.
- Values: int8 in ``[-127, 127]`` with one float32 scale per tensor, ``scale = max|x| / 127``
  over the tensor's selected entries (0 when it has none). A value is sent as ``q * scale``
  computed in float32, the same product on the device and at the desk.
- Indices: the gaps between ascending indices (the first gap is the first index) as unsigned
  LEB128 varints, or a bitmap of ``ceil(size / 8)`` bytes (bit ``i % 8`` of byte ``i // 8``)
  when that is smaller (dense selections). One leading byte names the coding.

Body layout (before zlib): ``scales`` (float32 little-endian, one per tensor), ``q`` (int8, one
per index), index coding byte, index payload. Decoding is strict: every count, gap and length
must be exactly what an encoder makes, or :class:`ValueError` says what is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INT8_LIMIT = 127  # symmetric range; -128 is never produced and refused when read
CODING_GAPS = 0  # index coding byte: LEB128 varint gaps
CODING_BITMAP = 1  # index coding byte: one bit per dense position
VARINT_BITS = 7  # payload bits per LEB128 byte
VARINT_MORE = 0x80  # continuation flag of a LEB128 byte
MAX_VARINT_BYTES = 5  # a gap is below 2**32, i.e. at most 5 groups of 7 bits
FRACTION_DIGITS = 9  # fraction * size rounded here first, so 0.01 * 60000 is 600, not 601
_SCALE_DTYPE = np.dtype("<f4")


@dataclass(frozen=True)
class SparseDelta:
    """What is sent: ``k`` ascending positions of a ``size``-long vector, int8 codes, scales."""

    size: int
    tensor_sizes: tuple[int, ...]
    indices: np.ndarray  # int64, strictly ascending, < size
    q: np.ndarray  # int8 in [-127, 127], one per index
    scales: np.ndarray  # float32 >= 0, one per tensor

    @property
    def k(self) -> int:
        return int(self.indices.size)

    def values(self) -> np.ndarray:
        """The sent values, dequantized (float32, one per index)."""
        per_value = self.scales[tensor_of(self.indices, self.tensor_sizes)]
        out: np.ndarray = self.q.astype(np.float32) * per_value
        return out

    def dense(self) -> np.ndarray:
        """The full float32 vector this delta stands for (zeros where nothing was sent)."""
        out = np.zeros(self.size, dtype=np.float32)
        out[self.indices] = self.values()
        return out

    def l2_norm(self) -> float:
        """Euclidean norm of the dequantized values (accumulated in float64)."""
        wide = self.values().astype(np.float64)
        return float(np.sqrt(np.dot(wide, wide)))


def top_k_count(size: int, fraction: float) -> int:
    """``ceil(fraction * size)``, at least 1: how many entries a delta of ``size`` sends."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"top-k fraction must be in (0, 1], got {fraction}")
    return max(1, min(size, math.ceil(round(fraction * size, FRACTION_DIGITS))))


def tensor_of(indices: np.ndarray, tensor_sizes: tuple[int, ...]) -> np.ndarray:
    """Index of the tensor each flat position belongs to."""
    ends = np.cumsum(np.asarray(tensor_sizes, dtype=np.int64))
    tensors: np.ndarray = np.searchsorted(ends, indices, side="right")
    return tensors


def sparsify(vector: np.ndarray, tensor_sizes: tuple[int, ...], fraction: float) -> SparseDelta:
    """Keep the ``top_k_count`` largest-magnitude entries of ``vector``, quantized per tensor."""
    v = np.asarray(vector, dtype=np.float32)
    if v.ndim != 1 or v.size != sum(tensor_sizes) or not tensor_sizes:
        raise ValueError(
            f"delta vector of shape {v.shape} does not match tensor sizes summing to "
            f"{sum(tensor_sizes)}"
        )
    if min(tensor_sizes) < 1:
        raise ValueError(f"tensor sizes must be positive, got {tensor_sizes}")
    if not np.isfinite(v).all():
        bad = int(np.flatnonzero(~np.isfinite(v))[0])
        raise ValueError(f"delta vector: NaN or infinity at position {bad}")
    k = top_k_count(v.size, fraction)
    magnitude = np.abs(v)
    if k == v.size:
        indices = np.arange(v.size, dtype=np.int64)
    else:
        indices = np.sort(np.argpartition(magnitude, v.size - k)[v.size - k :]).astype(np.int64)
    tensors = tensor_of(indices, tensor_sizes)
    peak = np.zeros(len(tensor_sizes), dtype=np.float32)
    np.maximum.at(peak, tensors, magnitude[indices])
    scales = (peak / np.float32(INT8_LIMIT)).astype(np.float32)
    per_value = scales[tensors]
    safe = np.where(per_value > 0, per_value, np.float32(1))
    q = np.clip(np.rint(v[indices] / safe), -INT8_LIMIT, INT8_LIMIT).astype(np.int8)
    return SparseDelta(v.size, tuple(tensor_sizes), indices, q, scales)


# --- index coding -----------------------------------------------------------------------------
def encode_varints(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of each value (< 2**35), concatenated."""
    v = np.asarray(values, dtype=np.uint64)
    lengths = np.ones(v.size, dtype=np.int64)
    rest = v >> np.uint64(VARINT_BITS)
    while rest.any():
        lengths += rest > 0
        rest >>= np.uint64(VARINT_BITS)
    starts = np.cumsum(lengths) - lengths
    out = np.zeros(int(lengths.sum()), dtype=np.uint8)
    for j in range(int(lengths.max(initial=0))):
        has = lengths > j
        group = (v[has] >> np.uint64(VARINT_BITS * j)) & np.uint64(0x7F)
        more = np.where(lengths[has] > j + 1, VARINT_MORE, 0).astype(np.uint64)
        out[starts[has] + j] = (group | more).astype(np.uint8)
    return out.tobytes()


def decode_varints(data: bytes, count: int) -> np.ndarray:
    """Exactly ``count`` canonical LEB128 values filling ``data`` (uint64)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf < VARINT_MORE)
    if ends.size != count or (buf.size and (ends.size == 0 or ends[-1] != buf.size - 1)):
        raise ValueError(f"index varints: expected {count} values in {buf.size} bytes")
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64) if count else ends
    lengths = ends - starts + 1
    if lengths.size and lengths.max() > MAX_VARINT_BYTES:
        raise ValueError(f"index varints: a value longer than {MAX_VARINT_BYTES} bytes")
    if np.any((lengths > 1) & (buf[ends] == 0)):
        raise ValueError("index varints: a value with a redundant trailing zero group")
    out = np.zeros(count, dtype=np.uint64)
    for j in range(int(lengths.max(initial=0))):
        has = lengths > j
        group = buf[starts[has] + j].astype(np.uint64) & np.uint64(0x7F)
        out[has] |= group << np.uint64(VARINT_BITS * j)
    return out


def encode_indices(indices: np.ndarray, size: int) -> bytes:
    """Coding byte and payload for ascending ``indices``: varint gaps or bitmap, the smaller."""
    gaps = np.diff(indices, prepend=0) if indices.size else indices
    varints = encode_varints(gaps)
    bitmap_len = (size + 7) // 8
    if bitmap_len < len(varints):
        bits = np.zeros(size, dtype=np.uint8)
        bits[indices] = 1
        return bytes([CODING_BITMAP]) + np.packbits(bits, bitorder="little").tobytes()
    return bytes([CODING_GAPS]) + varints


def decode_indices(data: bytes, size: int, k: int) -> np.ndarray:
    """The ``k`` strictly ascending indices below ``size`` that ``data`` codes (int64)."""
    if not data:
        raise ValueError("index block is empty")
    coding, payload = data[0], data[1:]
    if coding == CODING_BITMAP:
        if len(payload) != (size + 7) // 8:
            raise ValueError(f"index bitmap of {len(payload)} bytes for {size} positions")
        bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), bitorder="little")
        if bits[size:].any():
            raise ValueError("index bitmap has bits set past the vector's end")
        indices = np.flatnonzero(bits[:size]).astype(np.int64)
        if indices.size != k:
            raise ValueError(f"index bitmap holds {indices.size} positions, header says {k}")
        return indices
    if coding != CODING_GAPS:
        raise ValueError(f"unknown index coding {coding}")
    gaps = decode_varints(payload, k).astype(np.int64)
    if k > 1 and gaps[1:].min() < 1:
        raise ValueError("index gaps: a repeated index")
    indices = np.cumsum(gaps)
    if k and indices[-1] >= size:
        raise ValueError(f"index {int(indices[-1])} is past the vector's end ({size})")
    return indices


# --- body -------------------------------------------------------------------------------------
def pack(sparse: SparseDelta) -> bytes:
    """The uncompressed body: scales, int8 codes, index block."""
    return (
        sparse.scales.astype(_SCALE_DTYPE).tobytes()
        + sparse.q.astype(np.int8).tobytes()
        + encode_indices(sparse.indices, sparse.size)
    )


def max_packed_bytes(size: int, tensors: int, k: int) -> int:
    """Largest body an encoder makes for these counts (a bound for decompression)."""
    return tensors * _SCALE_DTYPE.itemsize + k + 1 + min(k * MAX_VARINT_BYTES, (size + 7) // 8)


def unpack(raw: bytes, size: int, tensor_sizes: tuple[int, ...], k: int) -> SparseDelta:
    """Parse :func:`pack` output against the header's counts; ``ValueError`` on any mismatch."""
    n_scale = len(tensor_sizes) * _SCALE_DTYPE.itemsize
    if len(raw) < n_scale + k + 1:
        raise ValueError(f"body of {len(raw)} bytes is too short for {k} values")
    scales = np.frombuffer(raw, dtype=_SCALE_DTYPE, count=len(tensor_sizes)).astype(np.float32)
    if not (np.isfinite(scales).all() and (scales >= 0).all()):
        raise ValueError("a tensor scale is negative or not finite")
    q = np.frombuffer(raw, dtype=np.int8, count=k, offset=n_scale).copy()
    if k and q.min() < -INT8_LIMIT:
        raise ValueError(f"an int8 code is below -{INT8_LIMIT}")
    indices = decode_indices(raw[n_scale + k :], size, k)
    return SparseDelta(size, tuple(tensor_sizes), indices, q, scales)
