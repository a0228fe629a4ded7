"""The device pipeline over a block of samples: grid, normalize, window, cascade, hysteresis.

``replay`` runs it over a whole file; the daemon runs the same steps as samples arrive. Every
step is causal (a row's result depends only on rows at or before it), so running a file in one
go or a sample at a time gives the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.bundle.manifest import Manifest
from edge_agent.data.grid import Grid, align_to_grid
from edge_agent.data.table import SensorTable
from edge_agent.detect.alerts import AlertState
from edge_agent.detect.cascade import STAGE_NONE, Cascade, WindowScores
from edge_agent.detect.windows import gather_windows, normalize, screen_features, window_ends

# Windows scored per call of the cascade: bounds memory on multi-million-row files
# (16k windows x 64 samples x 16 channels x 4 B = 64 MiB at most).
CHUNK_WINDOWS = 16_384


@dataclass(frozen=True)
class PipelineResult:
    """Per input row (in input order) and per scored window."""

    stage: npt.NDArray[np.int8]
    score: npt.NDArray[np.float64]
    p_anomaly: npt.NDArray[np.float64]
    alert: npt.NDArray[np.bool_]
    window_of_row: npt.NDArray[np.int64]  # index into windows, -1 if none
    windows: WindowScores
    window_alert: npt.NDArray[np.bool_]
    window_end_time: npt.NDArray[np.float64]


def prepare(
    table: SensorTable, manifest: Manifest
) -> tuple[Grid, npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Grid-align and normalize ``table`` and list the grid points where windows end."""
    t = table.select(manifest.channel_names)
    mean = np.array([c.mean for c in manifest.channels], dtype=np.float64)
    scale = np.array([c.scale for c in manifest.channels], dtype=np.float64)
    grid = align_to_grid(
        t.timestamps,
        t.values,
        period_s=manifest.sampling.period_s,
        max_hold=manifest.sampling.max_hold,
        fill=mean,
    )
    xn = normalize(grid.values, mean, scale)
    ends = window_ends(
        grid.segment_start,
        grid.imputed,
        manifest.window.length,
        manifest.window.hop,
        manifest.sampling.max_imputed_fraction,
    )
    return grid, xn, ends


def _concat(parts: list[WindowScores], channels: int) -> WindowScores:
    if not parts:
        return WindowScores(
            np.zeros(0, np.int8),
            np.zeros(0),
            np.zeros(0),
            np.zeros(0, np.bool_),
            np.zeros(0),
            np.zeros((0, channels), np.float32),
        )
    return WindowScores(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in WindowScores.__dataclass_fields__)
    )


Prepared = tuple[Grid, npt.NDArray[np.float32], npt.NDArray[np.int64]]


def run_pipeline(
    table: SensorTable,
    manifest: Manifest,
    cascade: Cascade,
    *,
    screen: bool = True,
    prepared: Prepared | None = None,
) -> PipelineResult:
    """Score ``table``; ``prepared`` (from :func:`prepare`) saves redoing the grid when the
    same table is scored more than once."""
    grid, xn, ends = prepared if prepared is not None else prepare(table, manifest)
    w = manifest.window.length
    stats = cascade.forest.sample_stats(xn)
    parts = []
    for start in range(0, ends.shape[0], CHUNK_WINDOWS):
        e = ends[start : start + CHUNK_WINDOWS]
        parts.append(
            cascade.score(gather_windows(xn, e, w), screen_features(xn, stats, e, w), screen=screen)
        )
    scores = _concat(parts, len(manifest.channels))

    # Hysteresis runs per segment: after an outage the machine is judged afresh.
    window_alert = np.zeros(ends.shape[0], np.bool_)
    seg_of_window = grid.segment_start[ends]
    state = AlertState(manifest.alerts)
    for seg in np.unique(seg_of_window):
        sel = np.flatnonzero(seg_of_window == seg)
        state.reset()
        window_alert[sel] = state.update(scores.raw_alert[sel])

    # Each grid point shows the latest window ending at or before it, if that window is the
    # current one (within one hop, same segment); otherwise nothing is scored there.
    m = grid.times.shape[0]
    win_at = np.full(m, -1, np.int64)
    win_at[ends] = np.arange(ends.shape[0])
    filled = np.maximum.accumulate(win_at)
    ok = filled >= 0
    idx = np.clip(filled, 0, None)
    if ends.shape[0]:
        ok &= (np.arange(m) - ends[idx] < manifest.window.hop) & (
            grid.segment_start[ends[idx]] == grid.segment_start
        )
    win_at = np.where(ok, filled, -1)
    row_win = win_at[grid.row_to_grid]
    has = row_win >= 0
    safe = np.clip(row_win, 0, None)
    empty = ends.shape[0] == 0
    stage = np.where(has, scores.stage[safe] if not empty else 0, STAGE_NONE).astype(np.int8)
    score = np.where(has, scores.score[safe] if not empty else 0.0, 0.0)
    p = np.where(has, scores.p_anomaly[safe] if not empty else 0.0, 0.0)
    alert = np.where(has, window_alert[safe] if not empty else False, False)
    return PipelineResult(
        stage=stage,
        score=score,
        p_anomaly=p,
        alert=alert.astype(np.bool_),
        window_of_row=row_win,
        windows=scores,
        window_alert=window_alert,
        window_end_time=grid.times[ends],
    )
