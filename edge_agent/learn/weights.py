"""A model's float weights as one typed value: what fleet learning trains, subtracts and ships.

Pipeline position: fleet learning (issue 11). ``export`` writes the float weights of the
trainable autoencoder into the bundle as ``train_weights.npz`` (``WeightSet.to_npz_bytes``);
the gateway loads them (``edge_agent.learn.bundle_weights``), trains them on its own normal
windows (``edge_agent.learn.local``), and the difference to the global weights
(``WeightSet.subtract``) becomes the delta that ``edge_agent.learn.delta`` compresses and signs.
The desk aggregator (``trainer.federate``) adds the averaged deltas back (``WeightSet.add``).

Tensors are kept in Keras ``model.weights`` order with Keras 3 paths as names
(``dense_0/kernel``, ``dense_0/bias``, ...), float32 and C-contiguous, read-only. The npz
encoding is deterministic (fixed zip timestamps, names in order), so the same weights always
give the same bytes and the same signed file hash.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass

import numpy as np

# npz member holding the tensor names in order (np.load lists members in any order).
NAMES_KEY = "__names__"
# Zip entries get this fixed timestamp so the encoding is byte-for-byte reproducible.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_DTYPE = np.dtype("<f4")


def _frozen_copy(name: str, array: object) -> np.ndarray:
    try:
        out = np.array(array, dtype=np.float32, order="C", copy=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"weight tensor {name!r}: not a float array ({exc})") from exc
    if out.ndim == 0:
        raise ValueError(f"weight tensor {name!r}: a scalar, expected at least one dimension")
    if not np.isfinite(out).all():
        raise ValueError(f"weight tensor {name!r}: contains NaN or infinity")
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class WeightSet:
    """Named float32 tensors in a fixed order (Keras ``model.weights`` order).

    Construction copies the arrays to read-only float32 C-contiguous ones, and refuses
    mismatched lengths, empty or repeated names, scalars and non-finite values.
    """

    names: tuple[str, ...]
    arrays: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        names = tuple(self.names)
        if len(names) != len(self.arrays):
            raise ValueError(f"weight set: {len(names)} names but {len(self.arrays)} arrays")
        if not names:
            raise ValueError("weight set: no tensors")
        seen: set[str] = set()
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"weight set: tensor name {name!r} is not a non-empty string")
            if name in seen:
                raise ValueError(f"weight set: tensor name {name!r} appears twice")
            seen.add(name)
        arrays = tuple(_frozen_copy(n, a) for n, a in zip(names, self.arrays, strict=True))
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "arrays", arrays)

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """Shape of every tensor, in order."""
        return tuple(tuple(int(d) for d in a.shape) for a in self.arrays)

    @property
    def tensor_sizes(self) -> tuple[int, ...]:
        """Parameters per tensor, in order (the layout a format-2 delta is read with)."""
        return tuple(int(a.size) for a in self.arrays)

    @property
    def size(self) -> int:
        """Number of scalar parameters over all tensors."""
        return sum(int(a.size) for a in self.arrays)

    def flat(self) -> np.ndarray:
        """All tensors concatenated, in order, as one float32 vector (a new array)."""
        return np.concatenate([a.reshape(-1) for a in self.arrays]).astype(np.float32)

    @classmethod
    def from_flat(cls, like: WeightSet, vec: np.ndarray) -> WeightSet:
        """Cut ``vec`` (as ``like.flat()`` lays it out) back into ``like``'s names and shapes."""
        flat = np.asarray(vec)
        if flat.ndim != 1 or flat.size != like.size:
            raise ValueError(
                f"flat weights: expected a vector of {like.size} values, got shape {flat.shape}"
            )
        arrays: list[np.ndarray] = []
        start = 0
        for shape in like.shapes:
            count = int(np.prod(shape))
            arrays.append(flat[start : start + count].reshape(shape))
            start += count
        return cls(like.names, tuple(arrays))

    def l2_norm(self) -> float:
        """Euclidean norm of all parameters together (accumulated in float64)."""
        total = 0.0
        for array in self.arrays:
            wide = array.astype(np.float64).ravel()
            total += float(np.dot(wide, wide))
        return float(np.sqrt(total))

    def check_like(self, other: WeightSet) -> None:
        """Raise ``ValueError`` naming the first tensor whose name or shape differs."""
        if len(self.names) != len(other.names):
            raise ValueError(f"weight sets differ: {len(self.names)} tensors vs {len(other.names)}")
        for i, (name, other_name) in enumerate(zip(self.names, other.names, strict=True)):
            if name != other_name:
                raise ValueError(f"weight sets differ at tensor {i}: {name!r} vs {other_name!r}")
            if self.arrays[i].shape != other.arrays[i].shape:
                raise ValueError(
                    f"weight tensor {name!r}: shape {self.arrays[i].shape} vs "
                    f"{other.arrays[i].shape}"
                )

    def subtract(self, other: WeightSet) -> WeightSet:
        """``self - other`` tensor by tensor (a delta when ``other`` is the starting point)."""
        self.check_like(other)
        return WeightSet(
            self.names, tuple(a - b for a, b in zip(self.arrays, other.arrays, strict=True))
        )

    def add(self, other: WeightSet) -> WeightSet:
        """``self + other`` tensor by tensor (apply a delta)."""
        self.check_like(other)
        return WeightSet(
            self.names, tuple(a + b for a, b in zip(self.arrays, other.arrays, strict=True))
        )

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the names, shapes and little-endian float32 bytes, in order."""
        digest = hashlib.sha256()
        for name, array in zip(self.names, self.arrays, strict=True):
            digest.update(name.encode("utf-8") + b"\0")
            digest.update(",".join(str(d) for d in array.shape).encode("ascii") + b"\0")
            digest.update(array.astype(_DTYPE, copy=False).tobytes())
        return digest.hexdigest()

    def to_npz_bytes(self) -> bytes:
        """The weights as a deterministic npz: one member per tensor plus the ordered names."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            members = [(NAMES_KEY, np.array(self.names, dtype=np.str_))]
            members += [
                (n, a.astype(_DTYPE, copy=False))
                for n, a in zip(self.names, self.arrays, strict=True)
            ]
            for key, array in members:
                info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
                info.external_attr = 0o644 << 16
                member = io.BytesIO()
                np.lib.format.write_array(member, array, allow_pickle=False)
                archive.writestr(info, member.getvalue())
        return buffer.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes, *, source: str = "npz") -> WeightSet:
        """Parse ``to_npz_bytes`` output; ``ValueError`` naming ``source`` when malformed."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                members = {key: npz[key] for key in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise ValueError(f"{source}: not a readable npz of weights ({exc})") from exc
        order = members.pop(NAMES_KEY, None)
        if order is None or order.ndim != 1 or order.dtype.kind != "U":
            raise ValueError(f"{source}: missing the {NAMES_KEY!r} list of tensor names")
        names = tuple(str(n) for n in order)
        missing = [n for n in names if n not in members]
        if missing:
            raise ValueError(f"{source}: tensor {missing[0]!r} is named but not stored")
        extra = sorted(set(members) - set(names))
        if extra:
            raise ValueError(f"{source}: tensor {extra[0]!r} is stored but not named")
        for name in names:
            if members[name].dtype != np.float32:
                raise ValueError(
                    f"{source}: tensor {name!r} is {members[name].dtype}, expected float32"
                )
        try:
            return cls(names, tuple(members[n] for n in names))
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc
