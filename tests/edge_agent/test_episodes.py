"""Alert episodes: open/update/close messages from window batches, and their payload."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle.verify import verify_bundle
from edge_agent.config.model import EventsConfig
from edge_agent.data.table import read_table
from edge_agent.detect.alerts import AlertPolicy, AlertState
from edge_agent.detect.cascade import STAGE_AUTOENCODER, STAGE_SCREEN
from edge_agent.detect.episodes import EpisodeTracker
from edge_agent.events import SEVERITY_CRITICAL, SEVERITY_INFO, Event
from edge_agent.model_slot import load_cascade
from edge_agent.pipeline import StreamingPipeline, WindowBatch

CHANNELS = ["a", "b", "c"]
POLICY = AlertPolicy(open_after=2, close_after=2)
T0 = 1_700_000_000.0


def _batch(
    raw: str,
    *,
    t0: float = T0,
    segment: int = 0,
    score: np.ndarray | None = None,
    stage: np.ndarray | None = None,
    contributions: np.ndarray | None = None,
    state: AlertState | None = None,
) -> WindowBatch:
    """Windows one second apart; a raw alert is a stage-2 window over threshold."""
    r = np.array([c == "1" for c in raw])
    n = r.size
    score = np.linspace(0.1, 0.1 * n, n) if score is None else score
    stage = np.full(n, STAGE_AUTOENCODER, np.int8) if stage is None else stage
    alert = (state or AlertState(POLICY)).update(r)
    contrib = (
        np.tile(np.float32([0.2, 0.5, 0.3]), (n, 1)) if contributions is None else contributions
    )
    return WindowBatch(
        first_window=0,
        end_time=t0 + np.arange(n, dtype=np.float64),
        end_index=np.arange(n, dtype=np.int64) + segment,
        segment=np.full(n, segment, np.int64),
        stage=stage,
        score=score,
        p_anomaly=np.where(stage == STAGE_AUTOENCODER, 1 - 1 / (10 + score), 0.0),
        raw_alert=r,
        alert=alert,
        error=np.where(stage == STAGE_AUTOENCODER, score, np.nan),
        contributions=contrib.astype(np.float32),
        row_window=np.arange(n, dtype=np.int64),
        current_segment=segment,
    )


def _tracker(interval_s: float = 2.0, top: int = 3) -> EpisodeTracker:
    cfg = EventsConfig(update_interval_s=interval_s, top_channels=top)
    return EpisodeTracker("press-7", "v1", CHANNELS, cfg)


def test_open_update_close_share_one_episode() -> None:
    tr = _tracker(interval_s=2.0)
    ev = tr.update(_batch("001111110000"), now=5.0)
    assert [e.state for e in ev] == ["open", "update", "update", "close"]
    assert [e.severity for e in ev] == [SEVERITY_CRITICAL, SEVERITY_INFO, SEVERITY_INFO,
                                        SEVERITY_CRITICAL]  # fmt: skip
    assert {e.episode for e in ev} == {ev[0].episode}
    assert len({e.id for e in ev}) == len(ev)
    # Opens on the 2nd raw alert (t0+3) but starts at the run's first window (t0+2).
    assert all(e.start == T0 + 2 for e in ev)
    assert ev[0].end is None
    assert ev[-1].end == T0 + 9  # 2nd normal window closes
    assert [e.peak_score for e in ev] == pytest.approx([0.4, 0.6, 0.8, 1.0])
    assert all(e.created == 5.0 and e.kind == "anomaly" and e.stage == 2 for e in ev)
    assert tr.open_episode is None


def test_updates_are_rate_limited_and_need_a_rise() -> None:
    raw = "1" * 60
    tr = _tracker(interval_s=10.0)
    ev = tr.update(_batch(raw), now=0.0)
    times = [T0 + 1] + [T0 + 1 + 10 * k for k in range(1, 6)]  # open at t0+1, then every 10 s
    assert [e.state for e in ev] == ["open"] + ["update"] * 5
    peaks = [e.peak_score for e in ev]
    assert peaks == sorted(peaks)
    assert peaks[-1] == pytest.approx(0.1 * (times[-1] - T0 + 1))
    # A flat score never rises after the open: no updates at all.
    flat = _tracker(interval_s=10.0).update(_batch(raw, score=np.full(60, 0.5)), now=0.0)
    assert [e.state for e in flat] == ["open"]
    # Window by window gives the same messages as one batch.
    tr2, state = _tracker(interval_s=10.0), AlertState(POLICY)
    one = [
        e
        for i in range(60)
        for e in tr2.update(
            _batch("1", t0=T0 + i, score=np.array([0.1 * (i + 1)]), state=state), now=0.0
        )
    ]
    key = [(e.state, e.start, e.end, e.peak_score, e.p_anomaly) for e in ev]
    assert [(e.state, e.start, e.end, e.peak_score, e.p_anomaly) for e in one] == key


def test_a_data_gap_closes_at_the_last_window_before_it() -> None:
    tr = _tracker(interval_s=100.0)
    opened = tr.update(_batch("0111111"), now=0.0)
    assert [e.state for e in opened] == ["open"]
    # Windows of a new segment: the old episode closes at its last window (t0+6), and the
    # new segment's raw alerts open a fresh episode.
    ev = tr.update(_batch("0011", t0=T0 + 500, segment=400), now=1.0)
    assert [e.state for e in ev] == ["close", "open"]
    assert ev[0].end == T0 + 6
    assert ev[0].episode == opened[0].episode != ev[1].episode
    assert ev[1].start == T0 + 502
    # Data back after a gap but no complete window yet: close right away.
    gap = _batch("", segment=900)
    closed = tr.update(gap, now=2.0)
    assert [(e.state, e.end) for e in closed] == [("close", T0 + 503)]
    assert tr.update(gap, now=3.0) == []


def test_top_channels_are_the_mean_stage2_shares() -> None:
    n = 10
    contrib = np.tile(np.float32([0.1, 0.6, 0.3]), (n, 1))
    contrib[::2] = [0.2, 0.2, 0.6]  # alternate windows blame c
    stage = np.full(n, STAGE_AUTOENCODER, np.int8)
    stage[5] = STAGE_SCREEN
    contrib[5] = [1.0, 0.0, 0.0]  # a stage-1 window never counts
    batch = _batch("1111111100", stage=stage, contributions=contrib)
    ev = _tracker(top=2).update(batch, now=0.0)
    assert ev[-1].state == "close"  # the close covers every window of the episode
    top = [(c.channel, c.share) for c in ev[-1].top_channels]
    expected_b = float(np.mean(contrib[stage == STAGE_AUTOENCODER, 1]))
    expected_c = float(np.mean(contrib[stage == STAGE_AUTOENCODER, 2]))
    assert [c for c, _ in top] == ["c", "b"]
    assert top[0][1] == pytest.approx(expected_c)
    assert top[1][1] == pytest.approx(expected_b)


def test_payload_is_valid_json() -> None:
    ev = _tracker(interval_s=100.0).update(_batch("0111100"), now=T0 + 3600)
    assert [e.state for e in ev] == ["open", "close"]
    for e in ev:
        d = json.loads(e.to_json())
        assert d["kind"] == "anomaly"
        assert d["machine_id"] == "press-7"
        assert d["model_version"] == "v1"
        assert d["episode"] == ev[0].episode
        assert d["start"] == "2023-11-14T22:13:21.000Z"
        assert d["created"] == "2023-11-14T23:13:20.000Z"
        assert [c["channel"] for c in d["top_channels"]] == ["b", "c", "a"]
        assert 0 < d["p_anomaly"] <= 1
        assert ("end" in d) == (e.state == "close")


def _episodes(ev: list[Event]) -> list[tuple[object, ...]]:
    return [(e.state, e.start, e.end, e.peak_score, e.p_anomaly, e.stage,
             tuple(c.channel for c in e.top_channels)) for e in ev]  # fmt: skip


def test_replaying_the_same_data_gives_the_same_episodes(
    bundle: Path, keys: Path, sim_csv: Path
) -> None:
    b = verify_bundle(bundle, keys / "signing.pub")
    m = b.manifest
    cascade = load_cascade(b)
    t = read_table(sim_csv, channels=m.channel_names).select(m.channel_names)
    runs = []
    for chunk in (1, 997):
        pipe = StreamingPipeline(m, cascade)
        tr = EpisodeTracker("m", m.model_version, m.channel_names, EventsConfig())
        ev: list[Event] = []
        for a in range(0, t.rows, chunk):
            ev += tr.update(pipe.push(t.timestamps[a : a + chunk], t.values[a : a + chunk]), 0.0)
        runs.append(ev)
    assert sum(e.state == "open" for e in runs[0]) >= 2
    assert _episodes(runs[0]) == _episodes(runs[1])
    assert {e.episode for e in runs[0]}.isdisjoint({e.episode for e in runs[1]})
