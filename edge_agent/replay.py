"""``edge_agent replay``: the device pipeline over a file, the offline twin of the daemon.

Verifies the bundle exactly as the daemon does, runs the same grid, windows, forest, int8
autoencoder, thresholds and hysteresis over every row, and writes one output row per input
row, in input order. Run it on history before deploying a model.

:func:`replay_stream` (the CLI) reads, scores and writes the file block by block through one
:class:`StreamingPipeline`, so memory stays bounded whatever the file's size, and the output
is bit for bit what :func:`replay` (the whole file in memory, for callers that analyse the
per-row arrays) writes.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from edge_agent.bundle.verify import verify_bundle
from edge_agent.data.table import iter_table, read_table
from edge_agent.data.table_stream import BLOCK_BYTES
from edge_agent.detect.cascade import STAGE_AUTOENCODER, STAGE_NONE
from edge_agent.errors import DataError
from edge_agent.model_slot import load_cascade
from edge_agent.pipeline import (
    PipelineResult,
    StreamingPipeline,
    WindowBatch,
    learned_checks,
    run_pipeline,
)
from edge_agent.replay_format import score_lines

log = logging.getLogger("edge_agent.replay")

G = TypeVar("G", bound=np.generic)
RowColumns = tuple[
    npt.NDArray[np.int8], npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]
]
OUTPUT_COLUMNS = ("timestamp", "stage", "score", "p_anomaly", "alert", "sensor_fault")
HEADER = (",".join(OUTPUT_COLUMNS) + "\r\n").encode("ascii")  # csv.writer's line end, as before


@dataclass(frozen=True)
class ReplaySummary:
    """What a streamed replay scored (the per-row detail is in the output file)."""

    rows: int
    stage2_rows: int
    alert_rows: int
    windows: int
    sensor_fault_rows: int  # a channel past one of its learned limits (data.learned)
    local_threshold: str | None = None  # --local-history: the threshold used, and why


def _require_file(data: Path) -> None:
    """A mistyped ``--data`` is named at once, before the bundle's signature is checked and
    its interpreter loaded (the reader would find out only at its first block)."""
    if not data.is_file():
        raise DataError("file not found" if not data.exists() else "not a file", path=str(data))


def replay(
    bundle_dir: Path,
    data: Path,
    out: Path,
    trust: Path | Sequence[Path],
    *,
    time_col: str | None = None,
    num_threads: int = 1,
) -> PipelineResult:
    """The whole file in memory: score it and write the output, and return every row's result."""
    _require_file(data)
    bundle = verify_bundle(bundle_dir, trust)
    m = bundle.manifest
    table = read_table(data, time_col=time_col, channels=m.channel_names)
    cascade = load_cascade(bundle, num_threads=num_threads)
    log.info("bundle %s verified; %d rows from %s", m.model_version, table.rows, data)
    result = run_pipeline(table, m, cascade)
    write_scores(out, table.timestamps, result)
    return result


def replay_stream(
    bundle_dir: Path,
    data: Path,
    out: Path,
    trust: Path | Sequence[Path],
    *,
    time_col: str | None = None,
    num_threads: int = 1,
    block_bytes: int = BLOCK_BYTES,
    local_history: Path | None = None,
) -> ReplaySummary:
    """Read, score and write ``data`` block by block (about ``block_bytes`` of text each).

    ``local_history``: first set the alert threshold as the gateway whose history it is
    would (``edge_agent.learn.offline.local_threshold``)."""
    _require_file(data)
    bundle = verify_bundle(bundle_dir, trust)
    m = bundle.manifest
    cascade = load_cascade(bundle, num_threads=num_threads)
    note = None
    if local_history is not None:
        from edge_agent.learn.offline import personalise_cascade

        note = personalise_cascade(bundle, cascade, local_history, time_col=time_col)
    log.info("bundle %s verified; scoring %s", m.model_version, data)
    pipe = StreamingPipeline(m, cascade)
    checks = learned_checks(m)
    rows = _RowView()
    counts = np.zeros(4, np.int64)  # rows, stage-2 rows, rows in alert, rows with a sensor fault
    blocks = iter_table(data, time_col=time_col, channels=m.channel_names, block_bytes=block_bytes)
    # Each block's last row is written with the next block: whether it was a spike is known
    # only from the reading after it (edge_agent.data.spikes).
    held: tuple[npt.NDArray[Any], ...] | None = None
    with ScoreFile(out) as sink:
        for block in blocks:
            values, fault = checks.apply(block.values)
            if held is not None:
                held[5][0] |= checks.late
            if block.timestamps.size == 0:
                continue
            cols: tuple[npt.NDArray[Any], ...] = (
                block.timestamps,
                *rows.of(pipe.push(block.timestamps, values)),
                fault,
            )
            if held is not None:
                cols = tuple(np.concatenate([h, c]) for h, c in zip(held, cols, strict=True))
            held = tuple(c[-1:] for c in cols)
            counts += _write(sink, tuple(c[:-1] for c in cols))
        if held is not None:
            counts += _write(sink, held)
    return ReplaySummary(
        int(counts[0]), int(counts[1]), int(counts[2]), rows.windows, int(counts[3]), note
    )


def _write(sink: ScoreFile, cols: tuple[npt.NDArray[Any], ...]) -> npt.NDArray[np.int64]:
    """Write rows (timestamp, stage, score, p_anomaly, alert, sensor_fault); their counts:
    rows, stage-2 rows, rows in alert, rows with a sensor fault."""
    ts, stage, score, p_anomaly, alert, fault = cols
    sink.write(score_lines(ts, stage, score, p_anomaly, alert, fault))
    s2 = np.count_nonzero(stage == STAGE_AUTOENCODER)
    return np.array([stage.size, s2, np.count_nonzero(alert), np.count_nonzero(fault)], np.int64)


class _RowView:
    """Per pushed row, the values of its window: in this push, or the last of earlier ones."""

    def __init__(self) -> None:
        self.windows = 0
        self._last = (np.int8(STAGE_NONE), 0.0, 0.0, False)  # before any window: unused

    def of(self, batch: WindowBatch) -> RowColumns:
        ids = batch.row_window
        if ((ids >= 0) & (ids < batch.first_window - 1)).any():
            raise RuntimeError("a row points at a window older than the previous push's last")
        idx = np.where(ids < 0, 0, ids - batch.first_window + 1)  # 0: previous push's last
        none = ids < 0

        def pick(values: npt.NDArray[G], k: int, empty: float) -> npt.NDArray[G]:
            ext = np.concatenate([np.asarray([self._last[k]], values.dtype), values])
            return np.where(none, np.asarray(empty, values.dtype), ext[idx])

        out = (
            pick(batch.stage, 0, STAGE_NONE),
            pick(batch.score, 1, 0.0),
            pick(batch.p_anomaly, 2, 0.0),
            pick(batch.alert, 3, False),
        )
        if batch.size:
            self._last = (batch.stage[-1], batch.score[-1], batch.p_anomaly[-1], batch.alert[-1])
            self.windows += batch.size
        return out


class ScoreFile:
    """The output CSV, written to a temporary file beside it and renamed over it when whole."""

    def __init__(self, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        self._out = out
        fd, self._tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        self._fh = os.fdopen(fd, "wb")
        self._fh.write(HEADER)

    def write(self, lines: bytes) -> None:
        self._fh.write(lines)

    def __enter__(self) -> ScoreFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self._fh.close()
        if kind is None:
            os.replace(self._tmp, self._out)
        else:
            Path(self._tmp).unlink(missing_ok=True)


def write_scores(out: Path, timestamps: npt.NDArray[np.float64], result: PipelineResult) -> None:
    """Write the per-row CSV of a whole-file result atomically (temporary file, then rename)."""
    with ScoreFile(out) as sink:
        sink.write(
            score_lines(
                timestamps,
                result.stage,
                result.score,
                result.p_anomaly,
                result.alert,
                result.sensor_fault,
            )
        )
