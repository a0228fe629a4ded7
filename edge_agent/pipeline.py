"""The device pipeline: grid, normalize, window, cascade, hysteresis, one sample at a time.

:class:`StreamingPipeline` is the one implementation. The daemon pushes rows as they arrive;
``replay``, the trainer's evaluation and the benchmarks call :func:`run_pipeline`, which
pushes a file through a fresh pipeline in chunks of rows. Every stage carries its state
across pushes (the aligner's held values, the window ring, the hysteresis counters) and every
kernel is causal and row-wise, so any split of the rows into pushes gives bit-identical
results: what ``replay`` shows on history is what the daemon does live.

While an alert is open, every window goes to stage 2, whatever the screen says: the screen
spares the autoencoder ordinary windows, and the time of an open alert is not ordinary. A fault
that has settled (a level shift a minute old, a drift) can look ordinary to the screen's
linear limits while the autoencoder still sees it; without this the screen would close the
alert in mid-fault. A push scores its windows with the screen, then sends the screened windows
that follow an open alert to stage 2 and redoes the hysteresis, until none is left: the same
decisions as judging one window at a time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from edge_agent.bundle.manifest import Manifest
from edge_agent.data.grid import Grid, GridAligner, align_push, align_to_grid
from edge_agent.data.learned import LearnedChecks
from edge_agent.data.table import SensorTable
from edge_agent.detect.alerts import AlertState
from edge_agent.detect.baseline import LevelState, follow_level
from edge_agent.detect.cascade import STAGE_NONE, STAGE_SCREEN, Cascade, WindowScores
from edge_agent.detect.projection import _sample_stats
from edge_agent.detect.ring import WindowRing, WindowSource, ring_push, split_ints
from edge_agent.detect.windows import normalize, window_ends
from edge_agent.kernels import CALL, bind, kernel

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
BOOL = npt.NDArray[np.bool_]
G = TypeVar("G", bound=np.generic)

# Grid points one kernel call may add at most: bounds the windows gathered and scored at once
# (16k windows x 64 samples x 16 channels x 4 B = 64 MiB at most).
CHUNK_POINTS = 16_384


@dataclass(frozen=True, slots=True)
class WindowBatch:
    """What one push produced: the windows it completed (oldest first) and its rows' windows.

    Window ids count windows since the pipeline started; ``row_window`` gives, per pushed row,
    the id of the window current at its grid point (ended less than a hop ago, same segment)
    or -1. ``segment`` and ``current_segment`` are global grid indices of segment starts.
    """

    first_window: int  # id of the first window here
    end_time: F64  # (n,) epoch s of each window's last grid point
    end_index: I64  # (n,) global grid index of that point
    segment: I64  # (n,) the window's segment
    stage: npt.NDArray[np.int8]
    score: F64
    p_anomaly: F64
    raw_alert: BOOL
    alert: BOOL  # hysteresis state after each window (reset at every new segment)
    error: F64
    contributions: F32  # (n, C)
    row_window: I64  # (rows,)
    current_segment: int  # segment of the latest grid point after this push (-1: no rows yet)

    @property
    def size(self) -> int:
        return int(self.end_time.shape[0])

    def scores(self) -> WindowScores:
        return WindowScores(
            self.stage, self.score, self.p_anomaly, self.raw_alert, self.error, self.contributions
        )


# The JIT's disk cache is stamped with every kernel file (edge_agent.kernels.jitcache), so an
# edit to a kernel this one inlines (grid, windows, projection, ring) recompiles it too.
# fmt: off
@kernel(
    "f8[:], f8[:,:], f8[:], f8[:],"  # ts, values, mean, scale
    " f8, i8, f8[:]!, f8[:]!, i8[:]!,"  # period, max_hold, last_t, held, grid_state
    " f8[:], f8, f8, f8[:]!, f8[:]!, b1,"  # level_rate, max_step, max_offset, level, seen, on
    " f8[:,:], f8[:], b1,"  # components, variances, has_stats
    " i8, i8, f8, f4[:,:]!, f4[:,:]!, i8[:]!, i8[:]!"  # window ... ring_state
    " -> (f4[:,:], f4[:,:], f8[:], i8[:])"
)
def _front(
    ts: F64, values: F64, mean: F64, scale: F64,
    period: float, max_hold: int, last_t: F64, held: F64, grid_state: I64,
    level_rate: F64, max_step: float, max_offset: float, level: F64, seen: F64,
    has_level: bool,
    components: F64, variances: F64, has_stats: bool,
    window: int, hop: int, max_imputed_fraction: float,
    buf_x: F32, buf_s: F32, buf_imp: I64, ring_state: I64,
) -> tuple[F32, F32, F64, I64]:  # pragma: no cover - compiled
    """Grid, normalize, adapting levels, per-sample statistics and window ring in one call:
    the daemon pays the interpreter's call overhead once per row, not once per step. Takes
    the leading rows that make at most CHUNK_POINTS grid points (``row_window`` says how
    many)."""
    first = grid_state[0] + 1  # the aligner's next grid index
    times, grid, imputed, seg, row_to_grid = align_push(
        ts, values, mean, period, max_hold, last_t, held, grid_state, CHUNK_POINTS)
    xn = normalize(grid, mean, scale)
    if has_level:
        follow_level(xn, imputed, level_rate, max_step, max_offset, level, seen)
    if has_stats:
        stats = _sample_stats(xn, components, variances)
    else:
        stats = np.zeros((xn.shape[0], 0), np.float32)
    return ring_push(xn, stats, imputed, times, seg, row_to_grid, first, window, hop,
                     max_imputed_fraction, buf_x, buf_s, buf_imp, ring_state)
# fmt: on


class StreamingPipeline:
    """The whole device pipeline for one machine; push rows in arrival order.

    ``screen=False`` sends every window to stage 2 (the trainer measures stage 2 alone).
    """

    def __init__(self, manifest: Manifest, cascade: Cascade, *, screen: bool = True) -> None:
        self.cascade = cascade
        self.screen = screen
        self.channels = c = len(manifest.channels)
        mean = np.array([ch.mean for ch in manifest.channels], dtype=np.float64)
        scale = np.array([ch.scale for ch in manifest.channels], dtype=np.float64)
        s, w = manifest.sampling, manifest.window
        # sample_stats checks the projection against the channels and says how many it makes.
        n_stats = cascade.forest.sample_stats(np.zeros((0, c), np.float32)).shape[1]
        proj = cascade.forest.projection
        self._aligner = a = GridAligner(s.period_s, s.max_hold, mean)
        self._ring = r = WindowRing(w.length, w.hop, c, n_stats, s.max_imputed_fraction)
        self._window = r.window
        self.levels = lv = LevelState.of(manifest.baseline, manifest.channel_names, s.period_s)
        # The fused kernel's arguments after the rows, in its order: checked here, once (the
        # aligner, the levels and the ring mutate their arrays in place), not at every row.
        self._args = (
            mean, scale, a.period_s, a.max_hold, a.last_t, a.held, a.state, *lv.args(),
            np.zeros((c, 0)) if proj is None else proj.components,
            np.zeros(0) if proj is None else proj.variances, proj is not None,
            r.window, r.hop, r.max_imputed_fraction, r.buf_x, r.buf_s, r.buf_imp, r.state,
        )  # fmt: skip
        self._front = bind(_front, CALL, CALL, *self._args)
        self._alerts = AlertState(manifest.alerts)
        self._hold_ratio = manifest.alerts.hold_ratio
        self._alert_segment = -1
        self._empty = _empty_batch(c)

    def push(self, timestamps: F64, values: F64) -> WindowBatch:
        """Rows ``(timestamps (n,), values (n, C) in manifest channel order)`` -> windows."""
        ts = np.ascontiguousarray(timestamps, dtype=np.float64)
        vals = np.ascontiguousarray(values, dtype=np.float64)
        n = ts.shape[0]
        if ts.ndim != 1 or vals.shape != (n, self.channels):
            raise ValueError(
                f"expected timestamps (n,) and values (n, {self.channels}), "
                f"got {ts.shape} and {vals.shape}"
            )
        part = self._push(ts, vals)
        if part.row_window.shape[0] == n:
            return part  # always so for a few rows: the daemon's case
        parts, a = [part], part.row_window.shape[0]
        while a < n:
            parts.append(self._push(ts[a:], vals[a:]))
            a += parts[-1].row_window.shape[0]
        return _concat(parts)

    def break_segment(self) -> None:
        """Start a new segment at the next row (a wall-clock step): windows, hysteresis and
        open episodes restart exactly as after a data gap."""
        self._aligner.break_segment()

    def _push(self, ts: F64, vals: F64) -> WindowBatch:
        first_id = self._ring.windows_emitted
        points, features, end_time, ints = self._front(ts, vals)
        current = self._aligner.segment_start
        n = features.shape[0]
        if not n:
            return replace(
                self._empty, first_window=first_id, row_window=ints, current_segment=current
            )
        last_row, end_index, seg, row_window = split_ints(ints, n)
        windows: F32 | WindowSource
        if n == 1:  # the daemon's case: the window is a view of the points
            last = int(last_row[0]) + 1
            windows = points[last - self._window : last][None]
        else:  # the windows stay in ``points`` until stage 2 asks for its share of them
            windows = WindowSource(points, last_row, self._window)
        before = self._alerts.snapshot(), self._alert_segment
        sc = self.cascade.score(windows, features, screen=self.screen)
        alert = self._hysteresis(sc, seg)
        # Screened windows that follow an open alert go to stage 2 (module docstring); the
        # daemon's usual push, one window and no alert before or in it, costs one test.
        while self.screen and (before[0][0] or alert.any()):
            follow = np.flatnonzero(
                self._open_before(alert, seg, *before) & (sc.stage == STAGE_SCREEN)
            )
            if not follow.size:
                break
            sc = sc.with_part(
                follow, self.cascade.score(windows[follow], features[follow], screen=False)
            )
            self._alerts.restore(before[0])
            self._alert_segment = before[1]
            alert = self._hysteresis(sc, seg)
        return WindowBatch(
            first_id, end_time, end_index, seg, sc.stage, sc.score, sc.p_anomaly, sc.raw_alert,
            alert, sc.error, sc.contributions, row_window, current,
        )  # fmt: skip

    @staticmethod
    def _open_before(alert: BOOL, segment: I64, state: I64, state_segment: int) -> BOOL:
        """Per window, whether the alert was open after the window before it (in its segment);
        ``state`` and ``state_segment``: the hysteresis before the first."""
        out = np.empty(alert.shape[0], np.bool_)
        out[0] = bool(state[0]) and segment[0] == state_segment
        out[1:] = alert[:-1] & (segment[1:] == segment[:-1])
        return out

    def _hysteresis(self, sc: WindowScores, segment: I64) -> BOOL:
        # Hysteresis restarts with every segment: after an outage the machine is judged afresh.
        raw = sc.raw_alert
        # The deadband's lower edge, from the threshold scoring now (a gateway may set its own).
        level = self._hold_ratio * self.cascade.threshold.alert_threshold
        hold = sc.error >= level  # NaN (stage 2 did not run) holds nothing
        if segment[0] == segment[-1] == self._alert_segment:
            return self._alerts.update(raw, hold)  # the common case: no new segment here
        alert = np.empty(raw.shape[0], np.bool_)
        cuts = [0, *(np.flatnonzero(segment[1:] != segment[:-1]) + 1).tolist(), raw.shape[0]]
        for a, b in itertools.pairwise(cuts):
            if segment[a] != self._alert_segment:
                self._alerts.reset()
                self._alert_segment = int(segment[a])
            alert[a:b] = self._alerts.update(raw[a:b], hold[a:b])
        return alert


def _empty_batch(channels: int) -> WindowBatch:
    i64, f64, b = np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.bool_)
    f32 = np.zeros((0, channels), np.float32)
    return WindowBatch(0, f64, i64, i64, np.zeros(0, np.int8), f64, f64, b, b, f64, f32, i64, -1)


def _concat(parts: list[WindowBatch]) -> WindowBatch:
    """Batches of consecutive pushes as one."""
    fields = ("end_time", "end_index", "segment", "stage", "score", "p_anomaly", "raw_alert",
              "alert", "error", "contributions", "row_window")  # fmt: skip
    cat = {f: np.concatenate([getattr(p, f) for p in parts]) for f in fields}
    return WindowBatch(
        first_window=parts[0].first_window, current_segment=parts[-1].current_segment, **cat
    )


def _per_row(per_window: npt.NDArray[G], row_window: I64, empty: float) -> npt.NDArray[G]:
    """Each row shows its window's value, or ``empty`` where it has none."""
    out = np.full(row_window.shape[0], empty, per_window.dtype)
    has = row_window >= 0
    out[has] = per_window[row_window[has]]
    return out


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
    # A channel past one of its learned limits (edge_agent.data.learned): on the
    # gateway, a sensor_fault event; stuck readings were scored as missing.
    sensor_fault: npt.NDArray[np.bool_]

    @property
    def flagged(self) -> npt.NDArray[np.bool_]:
        """Rows the operator is told about: in alert, or with a sensor fault."""
        return self.alert | self.sensor_fault


Prepared = tuple[Grid, npt.NDArray[np.float32], npt.NDArray[np.int64]]


def prepare(table: SensorTable, manifest: Manifest) -> Prepared:
    """The whole file on the grid, normalized, with its window ends, for desk-side analyses
    (baselines on the same windows). Scoring goes through :func:`run_pipeline`."""
    t = table.select(manifest.channel_names)
    mean = np.array([c.mean for c in manifest.channels], dtype=np.float64)
    scale = np.array([c.scale for c in manifest.channels], dtype=np.float64)
    s, w = manifest.sampling, manifest.window
    values, _ = learned_checks(manifest).apply(t.values)
    grid = align_to_grid(t.timestamps, values, period_s=s.period_s, max_hold=s.max_hold, fill=mean)
    xn = normalize(grid.values, mean, scale)
    LevelState.of(manifest.baseline, manifest.channel_names, s.period_s).apply(xn, grid.imputed)
    ends = window_ends(grid.segment_start, grid.imputed, w.length, w.hop, s.max_imputed_fraction)
    return grid, xn, ends


def run_pipeline(
    table: SensorTable,
    manifest: Manifest,
    cascade: Cascade,
    *,
    screen: bool = True,
) -> PipelineResult:
    """Score every row of ``table`` by pushing it through a fresh :class:`StreamingPipeline`.

    ``screen=False`` sends every window to stage 2.
    """
    t = table.select(manifest.channel_names)
    values, sensor_fault = learned_checks(manifest).apply(t.values)
    # push takes the rows in slices of at most CHUNK_POINTS grid points (bounded memory).
    win = StreamingPipeline(manifest, cascade, screen=screen).push(t.timestamps, values)
    rw = win.row_window
    return PipelineResult(
        stage=_per_row(win.stage, rw, STAGE_NONE),
        score=_per_row(win.score, rw, 0.0),
        p_anomaly=_per_row(win.p_anomaly, rw, 0.0),
        alert=_per_row(win.alert, rw, False),
        window_of_row=rw,
        windows=win.scores(),
        window_alert=win.alert,
        window_end_time=win.end_time,
        sensor_fault=sensor_fault,
    )


def learned_checks(manifest: Manifest) -> LearnedChecks:
    """Data quality's learned checks (stuck, noisy, jump) as the gateway applies them with
    this model and no configured ``stuck_samples``, for scoring a recorded file."""
    return LearnedChecks(manifest.learned_limits)
