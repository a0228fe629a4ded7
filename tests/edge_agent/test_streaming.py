"""The streaming pipeline is the batch pipeline: same windows, same bits, any chunking."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle.manifest import Manifest
from edge_agent.bundle.verify import verify_bundle
from edge_agent.data.table import SensorTable, read_table
from edge_agent.detect.alerts import AlertState
from edge_agent.detect.baseline import LevelBaseline
from edge_agent.detect.cascade import STAGE_AUTOENCODER, STAGE_SCREEN, STAGE_SKIPPED, Cascade
from edge_agent.detect.ring import WindowRing
from edge_agent.detect.windows import gather_windows, screen_features, window_ends
from edge_agent.model_slot import load_cascade
from edge_agent.pipeline import (
    CHUNK_POINTS,
    StreamingPipeline,
    WindowBatch,
    prepare,
    run_pipeline,
)

Rows = tuple[np.ndarray, np.ndarray]
SCORE_FIELDS = ("stage", "score", "p_anomaly", "raw_alert", "error", "contributions")
WINDOW_FIELDS = ("end_time", "end_index", "segment", "stage", "score", "p_anomaly",
                 "raw_alert", "alert", "error", "contributions")  # fmt: skip


@pytest.fixture(scope="module")
def model(bundle: Path, keys: Path) -> tuple[Manifest, Cascade]:
    """The bundle's model without learned stuck limits: these tests push raw rows into the
    pipeline, and ``prepare`` (their batch reference) would otherwise apply data quality's
    stuck filter to the simulator's stuck episodes first."""
    b = verify_bundle(bundle, keys / "signing.pub")
    unjudged = [c.model_copy(update={"stuck_after": None}) for c in b.manifest.channels]
    return b.manifest.model_copy(update={"channels": unjudged}), load_cascade(b)


@pytest.fixture(scope="module")
def clean(sim_csv: Path, model: tuple[Manifest, Cascade]) -> Rows:
    m = model[0]
    t = read_table(sim_csv, channels=m.channel_names).select(m.channel_names)
    return t.timestamps, t.values


@pytest.fixture(scope="module")
def messy(clean: Rows) -> Rows:
    """The plant with jitter, dropped rows (held gaps), outages, duplicates and NaNs."""
    ts, vals = clean
    rng = np.random.default_rng(7)
    keep = rng.random(ts.size) > 0.03
    for start in rng.choice(ts.size - 100, size=6, replace=False):
        keep[start : start + 45] = False  # longer than max_hold: a new segment
    idx = np.flatnonzero(keep)
    idx = np.sort(np.concatenate([idx, rng.choice(idx, size=200)]))  # duplicate rows
    t = ts[idx] + rng.uniform(-0.1, 0.1, idx.size)
    v = vals[idx].copy()
    v[rng.random(v.shape) < 0.02] = np.nan
    return t, v


def _sizes(n: int, how: str) -> Iterator[int]:
    if how == "one":
        yield from [1] * n
    elif how == "all":
        yield n
    else:
        rng = np.random.default_rng(11)
        while n > 0:
            k = int(min(n, rng.integers(0, 700)))  # 0: an empty push must be harmless
            yield k
            n -= k


def _stream(model: tuple[Manifest, Cascade], rows: Rows, how: str, **kw: bool) -> WindowBatch:
    pipe = StreamingPipeline(*model, **kw)
    ts, vals = rows
    parts, a, seen = [], 0, 0
    for k in _sizes(ts.size, how):
        b = pipe.push(ts[a : a + k], vals[a : a + k])
        assert b.first_window == seen
        assert b.row_window.size == k
        parts.append(b)
        a += k
        seen += b.size
    cat = {
        f: np.concatenate([getattr(p, f) for p in parts]) for f in (*WINDOW_FIELDS, "row_window")
    }
    return WindowBatch(first_window=0, current_segment=parts[-1].current_segment, **cat)


def _batch_reference(model: tuple[Manifest, Cascade], rows: Rows) -> dict[str, np.ndarray]:
    """The former batch path: whole-file grid, window_ends, gathered windows, then one window at
    a time the hysteresis (restarted per segment) and stage 2's scores for a screened window
    that follows an open alert; each row's latest window within a hop in its segment."""
    m, cascade = model
    table = SensorTable("x", rows[0], rows[1], tuple(m.channel_names))
    grid, xn, ends = prepare(table, m)
    w, hop = m.window.length, m.window.hop
    windows = gather_windows(xn, ends, w)
    features = screen_features(xn, cascade.forest.sample_stats(xn), ends, w)
    screened = cascade.score(windows, features)
    alone = cascade.score(windows, features, screen=False)
    seg = grid.segment_start[ends]
    s = {name: getattr(screened, name).copy() for name in SCORE_FIELDS}
    alert, state = np.zeros(ends.size, np.bool_), AlertState(m.alerts)
    for i in range(ends.size):
        if i == 0 or seg[i] != seg[i - 1]:
            state.reset()
        if state.is_open and screened.stage[i] == STAGE_SCREEN:
            for name in SCORE_FIELDS:
                s[name][i] = getattr(alone, name)[i]
        hold = s["error"][i : i + 1] >= m.alerts.hold_ratio * cascade.threshold.alert_threshold
        alert[i] = state.update(s["raw_alert"][i : i + 1], hold)[0]
    g = np.arange(grid.times.size)
    last = np.searchsorted(ends, g, side="right") - 1
    e = ends[np.maximum(last, 0)]
    ok = (last >= 0) & (g - e < hop) & (grid.segment_start[e] == grid.segment_start)
    return dict(end_time=grid.times[ends], end_index=ends, segment=seg, **s, alert=alert,
                row_window=np.where(ok, last, -1)[grid.row_to_grid])  # fmt: skip


def _assert_same(a: WindowBatch, b: WindowBatch | dict[str, np.ndarray]) -> None:
    for f in (*WINDOW_FIELDS, "row_window"):
        other = b[f] if isinstance(b, dict) else getattr(b, f)
        np.testing.assert_array_equal(getattr(a, f), other, err_msg=f, strict=True)


@pytest.mark.parametrize("data", ["clean", "messy"])
def test_any_chunking_gives_bit_identical_windows(
    model: tuple[Manifest, Cascade], data: str, request: pytest.FixtureRequest
) -> None:
    rows: Rows = request.getfixturevalue(data)
    whole = _stream(model, rows, "all")
    assert whole.size > 9_000
    assert (whole.stage == STAGE_AUTOENCODER).any()
    assert whole.alert.any()
    _assert_same(_stream(model, rows, "one"), whole)
    _assert_same(_stream(model, rows, "random"), whole)
    # ... and all of them are what the batch kernels say over the whole file.
    _assert_same(whole, _batch_reference(model, rows))
    if data == "messy":
        segments = np.unique(whole.segment)
        assert segments.size >= 5  # outages restarted the window buffer and the hysteresis
        assert whole.current_segment == segments[-1]


def test_stage_2_follows_an_open_alert_past_the_screen(
    model: tuple[Manifest, Cascade], clean: Rows
) -> None:
    """Every window after one that leaves the alert open is judged by stage 2, including
    windows the screen alone would have passed: their raw decision is stage 2's."""
    whole = _stream(model, clean, "all")
    follows = np.flatnonzero(whole.alert[:-1] & (whole.segment[1:] == whole.segment[:-1])) + 1
    assert follows.size > 100
    assert (whole.stage[follows] == STAGE_AUTOENCODER).all()
    m, cascade = model
    _, xn, ends = prepare(SensorTable("x", *clean, tuple(m.channel_names)), m)
    w = m.window.length
    alone = cascade.score(
        gather_windows(xn, ends, w), screen_features(xn, cascade.forest.sample_stats(xn), ends, w)
    )
    passed = follows[alone.stage[follows] == STAGE_SCREEN]
    assert passed.size > 0  # the screen would have spared stage 2 these
    np.testing.assert_array_equal(whole.error[passed] >= cascade.threshold.alert_threshold,
                                  whole.raw_alert[passed])  # fmt: skip


def test_the_deadband_holds_open_alerts_at_the_threshold_scoring_now(
    model: tuple[Manifest, Cascade], clean: Rows
) -> None:
    """An open alert holds while a window reaches ``hold_ratio`` of the threshold: alerts only
    last longer than without the deadband (a manifest without the key), and the edge follows a
    threshold replaced after the pipeline was built, as a gateway's personalised one is."""
    m, cascade = model
    assert m.alerts.hold_ratio < 1.0  # trainer fit writes a deadband
    held = _stream(model, clean, "all")
    plain_manifest = m.model_copy(
        update={"alerts": m.alerts.model_copy(update={"hold_ratio": 1.0})}
    )
    plain = _stream((plain_manifest, cascade), clean, "all")
    assert (held.alert >= plain.alert).all()
    assert held.alert.sum() > plain.alert.sum()
    original = cascade.threshold
    pipe = StreamingPipeline(m, cascade)
    try:
        cascade.threshold = original.scaled(1.5)
        _assert_same(pipe.push(*clean), _batch_reference(model, clean))
    finally:
        cascade.threshold = original


def test_run_pipeline_rows_are_the_streamed_rows(
    model: tuple[Manifest, Cascade], messy: Rows
) -> None:
    m, cascade = model
    res = run_pipeline(SensorTable("x", *messy, tuple(m.channel_names)), m, cascade)
    one = _stream(model, messy, "one")
    has = one.row_window >= 0
    assert has.mean() > 0.8
    assert (~has).any()
    np.testing.assert_array_equal(res.window_of_row, one.row_window)
    np.testing.assert_array_equal(res.window_alert, one.alert)
    np.testing.assert_array_equal(res.window_end_time, one.end_time)
    w = one.row_window[has]
    np.testing.assert_array_equal(res.stage[has], one.stage[w])
    np.testing.assert_array_equal(res.score[has], one.score[w])
    np.testing.assert_array_equal(res.p_anomaly[has], one.p_anomaly[w])
    np.testing.assert_array_equal(res.alert[has], one.alert[w])
    assert (res.stage[~has] == 0).all()
    assert not res.alert[~has].any()


def test_screen_off_and_hop_follow_the_same_path(
    model: tuple[Manifest, Cascade], messy: Rows
) -> None:
    m, cascade = model
    alone = _stream(model, messy, "random", screen=False)
    assert (alone.stage == STAGE_AUTOENCODER).all()
    assert np.isfinite(alone.error).all()
    table = SensorTable("x", *messy, tuple(m.channel_names))
    res = run_pipeline(table, m, cascade, screen=False)
    np.testing.assert_array_equal(res.windows.score, alone.score)
    hop3 = m.model_copy(update={"window": m.window.model_copy(update={"hop": 3})})
    streamed = _stream((hop3, cascade), messy, "one")
    assert streamed.size < alone.size / 2.5
    _assert_same(streamed, _batch_reference((hop3, cascade), messy))


def test_push_refuses_rows_of_the_wrong_shape(model: tuple[Manifest, Cascade]) -> None:
    pipe = StreamingPipeline(*model)
    with pytest.raises(ValueError, match="expected timestamps"):
        pipe.push(np.zeros(2), np.zeros((2, len(model[0].channels) + 1)))
    names = tuple(model[0].channel_names)
    empty = run_pipeline(SensorTable("x", np.zeros(0), np.zeros((0, len(names))), names), *model)
    assert empty.stage.size == 0
    assert empty.windows.stage.size == 0


@pytest.mark.parametrize(("hop", "fraction"), [(1, 0.25), (3, 0.1), (2, 0.0)])
def test_ring_follows_window_ends_to_the_boundary(hop: int, fraction: float) -> None:
    """Dense imputation puts many windows exactly at the imputed-cell limit."""
    rng = np.random.default_rng(hop)
    m, c, w = 4000, 2, 10
    imputed = rng.random((m, c)) < 0.12
    starts = np.sort(rng.choice(np.arange(1, m), size=40, replace=False))
    seg = np.maximum.accumulate(np.where(np.isin(np.arange(m), starts), np.arange(m), 0))
    xn = rng.normal(size=(m, c)).astype(np.float32)
    stats = rng.random((m, 2)).astype(np.float32)
    ends = window_ends(seg, imputed, w, hop, fraction)
    cells = np.array([imputed[e - w + 1 : e + 1].sum() for e in ends])
    assert (cells == int(fraction * w * c)).sum() > 10  # the boundary is exercised
    ring = WindowRing(w, hop, c, 2, fraction)
    got, a = [], 0
    for k in [*rng.integers(0, 50, size=200).tolist(), m]:
        b = min(a + k, m)
        out = ring.push(xn[a:b], stats[a:b], imputed[a:b], np.arange(a, b, dtype=np.float64),
                        seg[a:b], np.arange(a, b), a)  # fmt: skip
        got.append(out)
        a = b
    np.testing.assert_array_equal(np.concatenate([o.end_index for o in got]), ends)
    np.testing.assert_array_equal(np.concatenate([o.segment for o in got]), seg[ends])
    windows = np.concatenate([o.windows for o in got])
    np.testing.assert_array_equal(windows, gather_windows(xn, ends, w))
    features = np.concatenate([o.features for o in got])
    np.testing.assert_array_equal(features, screen_features(xn, stats, ends, w), strict=True)
    assert ring.windows_emitted == ends.size


def test_an_outage_during_an_alert_resets_the_hysteresis(
    model: tuple[Manifest, Cascade], clean: Rows
) -> None:
    ts, vals = clean
    whole = _stream(model, clean, "all")
    # Cut the stream with a long outage right after a window that is in alert.
    on = np.flatnonzero(whole.alert & np.roll(whole.alert, -1))
    cut_row = int(np.searchsorted(ts, whole.end_time[on[len(on) // 2]], side="right"))
    gapped = (np.where(np.arange(ts.size) >= cut_row, ts + 3600.0, ts), vals)
    streamed = _stream(model, gapped, "one")
    after = np.flatnonzero(streamed.end_time > ts[cut_row - 1] + 3600.0)
    assert streamed.alert[after[0] - 1]
    assert not streamed.alert[after[0]]  # judged afresh after the outage
    _assert_same(streamed, _batch_reference(model, gapped))


def test_a_push_longer_than_one_kernel_call_is_split_seamlessly(
    model: tuple[Manifest, Cascade], messy: Rows
) -> None:
    ts, vals = messy
    span = ts[-1] - ts[0] + 1.0
    # Twice the messy stream: more than CHUNK_POINTS grid points in one push.
    long = (np.concatenate([ts, ts + span]), np.concatenate([vals, vals]))
    assert long[0].size > CHUNK_POINTS
    whole = _stream(model, long, "all")
    assert whole.end_index[-1] > CHUNK_POINTS
    _assert_same(whole, _stream(model, long, "random"))
    _assert_same(whole, _batch_reference(model, long))


def test_a_window_the_model_cannot_take_is_skipped_not_fatal(
    model: tuple[Manifest, Cascade], clean: Rows
) -> None:
    """1e39 is finite in float64 but not once normalized to float32: the windows holding it
    are skipped (stage -1, no alert) and the rows after them are scored as before."""
    m, cascade = model
    ts, vals = clean
    n = 3 * m.window.length
    bad = vals[:n].copy()
    bad[n // 2, 0] = 1e39
    pipe = StreamingPipeline(m, cascade)
    batch = pipe.push(ts[:n], bad)
    skipped = batch.stage == STAGE_SKIPPED
    assert skipped.sum() == m.window.length  # every window that holds the row
    assert not batch.alert[skipped].any()
    assert (batch.stage[~skipped] >= STAGE_SCREEN).all()
    after = pipe.push(ts[n : 2 * n], vals[n : 2 * n])
    assert after.size
    assert (after.stage >= STAGE_SCREEN).all()


def test_adapting_levels_stream_bit_identically(
    model: tuple[Manifest, Cascade], messy: Rows
) -> None:
    """The adapting level is pipeline state like the aligner's: any chunking, same bits, and
    the batch kernels (``prepare``) agree; with it the windows differ from the fixed level."""
    m, cascade = model
    names = m.channel_names[:2]
    fast = LevelBaseline(channels=names, time_constant_s=30.0, max_step=2.0, max_offset=12.0)
    adapting = (m.model_copy(update={"baseline": fast}), cascade)
    whole = _stream(adapting, messy, "all")
    _assert_same(_stream(adapting, messy, "one"), whole)
    _assert_same(_stream(adapting, messy, "random"), whole)
    _assert_same(whole, _batch_reference(adapting, messy))
    fixed = _stream(model, messy, "all")
    np.testing.assert_array_equal(whole.end_index, fixed.end_index)
    assert not np.array_equal(whole.score, fixed.score)


def test_a_manifest_whose_baseline_names_an_unknown_channel_is_refused(
    model: tuple[Manifest, Cascade],
) -> None:
    doc = model[0].model_dump(mode="json")
    doc["baseline"] = {"channels": ["nope"], "time_constant_s": 900.0, "max_step": 2.0,
                       "max_offset": 12.0}  # fmt: skip
    with pytest.raises(ValueError, match=r"level baseline names channels .* \['nope'\]"):
        Manifest.model_validate(doc)
    doc["baseline"]["channels"] = model[0].channel_names[:1]
    assert Manifest.model_validate(doc).baseline is not None


def test_the_cascade_scores_stage_2_by_its_thresholds_statistic(
    model: tuple[Manifest, Cascade], clean: Rows
) -> None:
    manifest, cascade = model
    assert cascade.threshold.statistic == "channel_max"  # trainer fit's default

    def judged_by(statistic: str) -> Cascade:
        return Cascade(
            forest=cascade.forest,
            screen_threshold=cascade.screen_threshold,
            autoencoder=cascade.autoencoder,
            threshold=cascade.threshold.model_copy(update={"statistic": statistic}),
        )

    rows = (clean[0][:600], clean[1][:600])
    mean = _stream((manifest, judged_by("mean")), rows, "all", screen=False)
    top = _stream((manifest, judged_by("channel_max")), rows, "one", screen=False)
    np.testing.assert_array_equal(top.contributions, mean.contributions)
    # Each channel's mean square is its share of C times the window mean; the worst is the max.
    c = len(manifest.channel_names)
    expected = mean.contributions.astype(np.float64).max(axis=1) * c * mean.error
    np.testing.assert_allclose(top.error, expected, rtol=1e-6)
    assert np.all(top.error > mean.error)
    np.testing.assert_array_equal(top.raw_alert, top.error >= cascade.threshold.alert_threshold)
    # Screened, streamed one row at a time, it is still the batch path.
    worst = (manifest, judged_by("channel_max"))
    _assert_same(_stream(worst, rows, "one"), _batch_reference(worst, rows))
