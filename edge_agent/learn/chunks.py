"""One file of the normal-data buffer: a chunk of raw rows in stretches, and its checks.

Pipeline position: fleet learning, below ``edge_agent.learn.buffer`` (which decides what goes
into a chunk and when chunks go). A chunk is an ``.npz`` read with ``allow_pickle=False``:
``ts`` (float64 epoch s), ``values`` (float32, rows x channels, in ``channels`` order),
``starts`` (int64, the first row of each stretch of consecutive normal rows), ``channels``
(names) and ``mode`` (the chunk's operating mode, :func:`operating_mode`; the buffer evicts by
it, :func:`eviction_victim`). Reading checks every shape, type and value,
so a damaged file is a :class:`ChunkError` naming what is wrong, never bad training data.
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.bundle.manifest import Manifest
from edge_agent.data.table import SensorTable
from edge_agent.fsutil import read_no_follow

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
MEMBERS = ("ts", "values", "starts", "channels", "mode")
CORRUPT_DIR = "corrupt"  # beside the chunks: damaged files, for a person to look at
KEEP_CORRUPT = 8  # damaged files kept at most; older ones are deleted
MODE_STEP = 0.5  # operating modes: normalized channel means rounded to this


class ChunkError(ValueError):
    """A chunk file that is not what the buffer wrote."""


@dataclass(frozen=True)
class Chunk:
    """What the buffer keeps in memory about one chunk file."""

    name: str
    first_ts: float
    rows: int
    channels: tuple[str, ...]
    mode: tuple[float, ...]
    bytes: int


@dataclass(frozen=True)
class ChunkData:
    meta: Chunk
    ts: F64
    values: F32
    starts: I64

    def stretches(self, channels: list[str]) -> list[SensorTable]:
        """Each stretch as a table of ``channels`` (a subset of the chunk's, model order)."""
        cols = [self.meta.channels.index(c) for c in channels]
        ends = [*self.starts[1:].tolist(), self.meta.rows]
        return [
            SensorTable(path=self.meta.name, timestamps=self.ts[a:b].copy(),
                        values=self.values[a:b, cols].astype(np.float64),
                        channels=tuple(channels))
            for a, b in zip(self.starts.tolist(), ends, strict=True)
        ]


def encode_chunk(ts: F64, values: F32, starts: I64, channels: tuple[str, ...],
                 mode: tuple[float, ...]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, ts=np.asarray(ts, np.float64), values=np.asarray(values, np.float32),
             starts=np.asarray(starts, np.int64), channels=np.array(channels, dtype=np.str_),
             mode=np.array(mode, np.float64))
    return buffer.getvalue()


def read_chunk(path: Path) -> ChunkData:
    """Read and check ``path`` (never through a link); ChunkError or OSError."""
    data = read_no_follow(path.parent, path.name)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            got = {k: npz[k] for k in MEMBERS}
    except (ValueError, KeyError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise ChunkError(f"not a readable chunk ({exc})") from None
    ts, values, starts = got["ts"], got["values"], got["starts"]
    channels = tuple(str(c) for c in got["channels"].reshape(-1))
    n = ts.shape[0] if ts.ndim == 1 else -1
    problems = [
        (ts.dtype != np.float64 or ts.ndim != 1 or n < 1, "ts is not a float64 vector"),
        (values.dtype != np.float32 or values.shape != (n, len(channels)),
         f"values are not float32 ({n}, {len(channels)})"),
        (got["mode"].shape != (len(channels),), "mode does not match the channels"),
        (starts.dtype != np.int64 or starts.ndim != 1 or starts.size < 1
         or starts[0] != 0 or bool(np.any(np.diff(starts) <= 0)) or starts[-1] >= n,
         "stretch starts are not ascending row numbers from 0"),
        (len(set(channels)) != len(channels) or not channels, "channel names"),
    ]
    bad = [why for broken, why in problems if broken]
    if bad:
        raise ChunkError("; ".join(bad))
    if not (np.isfinite(ts).all() and np.isfinite(values).all()):
        raise ChunkError("non-finite times or values")
    meta = Chunk(name=path.name, first_ts=float(ts[0]), rows=n, channels=channels,
                 mode=tuple(float(x) for x in got["mode"]), bytes=len(data))
    return ChunkData(meta, ts, values, starts)


def operating_mode(values: F32, manifest: Manifest) -> tuple[float, ...]:
    """Per channel, the mean of the normalized values rounded to the nearest ``MODE_STEP``."""
    mean = np.array([c.mean for c in manifest.channels])
    scale = np.array([c.scale for c in manifest.channels])
    z = (values.astype(np.float64).mean(axis=0) - mean) / scale
    return tuple(float(x) for x in np.round(z / MODE_STEP) * MODE_STEP)


def eviction_victim(chunks: Sequence[Chunk]) -> Chunk:
    """The oldest chunk (``chunks`` oldest first) of the most common operating mode."""
    counts = Counter(c.mode for c in chunks)
    top = max(counts.values())
    return next(c for c in chunks if counts[c.mode] == top)


def move_aside(root: Path, name: str) -> None:
    """Move chunk ``name`` into ``root/corrupt/``, keeping the last :data:`KEEP_CORRUPT`."""
    aside = root / CORRUPT_DIR
    aside.mkdir(exist_ok=True)
    (root / name).replace(aside / name)
    for old in sorted(aside.iterdir(), key=lambda p: p.stat().st_mtime)[:-KEEP_CORRUPT]:
        old.unlink()
