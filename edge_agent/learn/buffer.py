"""The gateway's bounded on-disk buffer of its own normal data, for local training and
local thresholds.

Pipeline position: fleet learning, fed after every scored push with the rows
:class:`~edge_agent.learn.select.NormalRows` keeps; read by local training
(``edge_agent.learn.learner``) and threshold calibration (``edge_agent.learn.personalise``).

What is kept is raw rows (float64 epoch seconds, float32 values, channel names), never
normalized windows: any model, today's or the next one, rebuilds its own windows from them
with the pipeline's own grid and normalisation (``edge_agent.learn.history``). Consecutive kept
rows form a stretch; a rejected row ends it, and a stretch shorter than a window is dropped.

SD-card friendly: rows gather in memory (``edge_agent.learn.pending``) and are written once
per ``chunk_rows`` rows as one ``.npz`` file under ``<state_dir>/learn/buffer/``
(``edge_agent.fsutil.atomic_write``). At most one chunk starts per ``sample_every_s`` of sample
time (rows in between are not kept), so the buffer spans days or weeks rather than the last
hour. Over ``max_mb`` the oldest chunk of the most common operating mode goes, where a chunk's
mode is its per-channel mean of normalized values rounded to the nearest 0.5 (the model's
normalisation when it was written): the buffer keeps a spread over time and over operating
points. A chunk file that cannot be read is moved to ``buffer/corrupt/`` and counted, never
fatal; so is a write the disk refuses.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.bundle.manifest import Manifest
from edge_agent.data.table import SensorTable
from edge_agent.fsutil import atomic_write
from edge_agent.learn.chunks import (
    CORRUPT_DIR,
    Chunk,
    ChunkError,
    encode_chunk,
    eviction_victim,
    move_aside,
    operating_mode,
    read_chunk,
)
from edge_agent.learn.history import history_windows
from edge_agent.learn.pending import PendingRows
from edge_agent.logs import Throttle

log = logging.getLogger("edge_agent.learn")

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
BOOL = npt.NDArray[np.bool_]
BYTES_PER_MIB = 1 << 20
BUFFER_DIR = "buffer"  # under <state_dir>/learn/
LOG_EVERY_S = 300.0
FILE_MODE = 0o640
TRAIN_HOP = 1  # every complete window of a stretch: short histories need all of them


@dataclass(frozen=True)
class BufferSettings:
    chunk_rows: int
    sample_every_s: float
    max_bytes: int


@dataclass(frozen=True)
class BufferStats:
    chunks: int
    rows: int
    bytes: int
    corrupt: int  # files moved aside since start
    write_errors: int


class NormalBuffer:
    """Chunks of normal rows on disk; see the module docstring. ``add`` and ``flush`` come from
    the main loop; ``windows`` and ``stats`` from any thread."""

    def __init__(self, root: Path, settings: BufferSettings) -> None:
        self.root = root
        self.settings = settings
        self._throttle = Throttle(log, LOG_EVERY_S)
        self._lock = threading.Lock()  # guards _chunks and the counters
        self._chunks: list[Chunk] = []
        self.corrupt = 0
        self.write_errors = 0
        self._pending = PendingRows()  # in memory until a chunk is full
        self._channels: tuple[str, ...] = ()
        self._next_start = -np.inf  # sample time from which a new chunk may start
        self._seq = 0
        self._load()

    # --- the main loop's side ----------------------------------------------------------------
    def add(self, ts: F64, rows: F64, keep: BOOL, manifest: Manifest) -> None:
        """Rows of one push (model channel order) and which of them are normal."""
        names = tuple(manifest.channel_names)
        if names != self._channels:
            self.flush(None)  # another model's rows cannot share a chunk
            self._channels = names
        length = manifest.window.length
        edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
        for a, b in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
            if a > 0:  # rejected rows before this run end the stretch
                self._pending.end_stretch(length)
            self._add_run(ts[a:b], rows[a:b], manifest)
        if keep.shape[0] and not keep[-1]:
            self._pending.end_stretch(length)

    def _add_run(self, ts: F64, rows: F64, manifest: Manifest) -> None:
        """Consecutive normal rows: into the pending stretch, a chunk written when full."""
        pending, length = self._pending, manifest.window.length
        i, n = 0, ts.shape[0]
        while i < n:
            if pending.count == 0:  # a new chunk starts no earlier than _next_start
                i = max(i, int(np.searchsorted(ts, self._next_start)))
                if i >= n:
                    pending.stretch = 0  # rows skipped: what follows is a new stretch
                    return
            take = min(n - i, self.settings.chunk_rows - pending.count)
            pending.append(ts[i : i + take], rows[i : i + take])
            i += take
            if pending.count >= self.settings.chunk_rows:
                pending.end_stretch(length)  # a stretch cut short by a full chunk
                if pending.count:
                    self._write(manifest)

    def flush(self, manifest: Manifest | None) -> None:
        """Write what is pending as a chunk (the agent stops, or another model comes), if a
        whole window's stretch is there; ``None``: drop it."""
        if manifest is not None:
            self._pending.end_stretch(manifest.window.length)
            if self._pending.count:
                self._write(manifest)
        self._pending.clear()

    def _write(self, manifest: Manifest) -> None:
        ts, values, starts = self._pending.take()
        mode = operating_mode(values, manifest)
        data = encode_chunk(ts, values, starts, self._channels, mode)
        chunk = Chunk(name=self._name(float(ts[0])), first_ts=float(ts[0]), rows=ts.shape[0],
                      channels=self._channels, mode=mode, bytes=len(data))
        self._next_start = chunk.first_ts + self.settings.sample_every_s
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(self.root / chunk.name, data, mode=FILE_MODE)
        except OSError as err:
            with self._lock:
                self.write_errors += 1
            self._throttle.warning("write", "learn buffer: cannot write %s (%s); those rows are "
                                   "not kept (%d write error(s))", chunk.name, err,
                                   self.write_errors)
            return
        with self._lock:
            self._chunks.append(chunk)
            self._evict()

    def _name(self, first_ts: float) -> str:
        self._seq += 1
        return f"chunk-{int(first_ts * 1000):014d}-{self._seq:04d}.npz"

    def _evict(self) -> None:
        """Over the cap: the oldest chunk of the most common mode goes (caller holds _lock)."""
        while sum(c.bytes for c in self._chunks) > self.settings.max_bytes and len(
                self._chunks) > 1:
            victim = eviction_victim(self._chunks)
            self._chunks.remove(victim)
            (self.root / victim.name).unlink(missing_ok=True)

    # --- readers ------------------------------------------------------------------------------
    def stats(self) -> BufferStats:
        with self._lock:
            return BufferStats(len(self._chunks), sum(c.rows for c in self._chunks),
                               sum(c.bytes for c in self._chunks), self.corrupt,
                               self.write_errors)

    def windows(self, manifest: Manifest, max_windows: int | None = None) -> F32:
        """Normalized windows ``(N, W, C)`` of ``manifest`` from every chunk holding its
        channels, oldest first; at most about ``max_windows`` of them, evenly spread."""
        with self._lock:
            chunks = [c for c in self._chunks if set(manifest.channel_names) <= set(c.channels)]
        w = manifest.window.length
        total = sum(max(0, c.rows - w + 1) for c in chunks)
        stride = 1 if max_windows is None or total <= max_windows else -(-total // max_windows)
        parts: list[F32] = []
        for c in chunks:
            for table in self._tables(c, manifest.channel_names):
                parts.append(history_windows(table, manifest, hop=TRAIN_HOP)[0][::stride])
        if not parts:
            return np.zeros((0, w, len(manifest.channels)), np.float32)
        out = np.concatenate(parts)
        if max_windows is not None and out.shape[0] > max_windows:
            out = out[np.linspace(0, out.shape[0] - 1, max_windows).astype(np.int64)]
        return out

    def _tables(self, chunk: Chunk, channels: list[str]) -> list[SensorTable]:
        try:
            return read_chunk(self.root / chunk.name).stretches(channels)
        except FileNotFoundError:  # evicted meanwhile
            return []
        except (OSError, ChunkError) as err:
            self._quarantine(chunk.name, str(err))
            with self._lock:
                if chunk in self._chunks:
                    self._chunks.remove(chunk)
            return []

    # --- start-up -----------------------------------------------------------------------------
    def _load(self) -> None:
        if not self.root.is_dir():
            return
        found: list[Chunk] = []
        for path in sorted(self.root.glob("chunk-*.npz")):
            try:
                found.append(read_chunk(path).meta)
            except (OSError, ChunkError) as err:
                self._quarantine(path.name, str(err))
        found.sort(key=lambda c: (c.first_ts, c.name))
        self._chunks = found
        self._seq = len(found)
        if found:
            self._next_start = found[-1].first_ts + self.settings.sample_every_s
        with self._lock:
            self._evict()  # max_mb may have shrunk since

    def _quarantine(self, name: str, why: str) -> None:
        """Move a chunk that cannot be read aside; keep only the last few."""
        with self._lock:
            self.corrupt += 1
        self._throttle.warning("corrupt", "learn buffer: %s is damaged (%s); moved to %s/ "
                               "(%d so far)", name, why, CORRUPT_DIR, self.corrupt)
        try:
            move_aside(self.root, name)
        except OSError as err:
            log.warning("learn buffer: cannot move %s aside: %s", name, err)
