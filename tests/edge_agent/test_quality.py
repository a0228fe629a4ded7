"""Per-channel data quality: which readings are flagged, why, and which events that makes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edge_agent.config.model import ChannelQuality, QualityDefaults
from edge_agent.data.learned import LearnedChecks, LearnedLimits
from edge_agent.data.quality import ModelChannels, QualityMonitor
from edge_agent.events import SEVERITY_WARNING, Event

INF = math.inf
NAN = math.nan
CLEAR = 3


def monitor(stuck: int | None = 3, channels: tuple[str, ...] = ("x", "y")) -> QualityMonitor:
    """'x' has every check (range 0..10, stuck after 3, stale after 5 s); others defaults."""
    checks = {"x": ChannelQuality(min=0.0, max=10.0, stuck_samples=stuck, stale_s=5.0)}
    defaults = QualityDefaults(stale_s=20.0, clear_samples=CLEAR)
    return QualityMonitor(list(channels), checks, defaults, "press-7")


class Feeder:
    """Feeds one channel 'x' (plus a healthy 'y') one sample per second."""

    def __init__(self, mon: QualityMonitor) -> None:
        self.mon = mon
        self.t = 1000.0
        self.events: list[Event] = []
        self.y = 0.0

    def __call__(self, x: float, *, age: float = 0.1, fresh: bool = True) -> float:
        self.t += 1.0
        self.y += 1.0  # always fresh and changing: never flagged
        out, events = self.mon.check(
            self.t,
            np.array([x, self.y]),
            np.array([age, 0.1]),
            np.array([fresh, True]),
        )
        assert out[1] == self.y
        self.events += events
        return float(out[0])

    def reasons(self) -> dict[str, int]:
        return {r: n for (ch, r), n in self.mon.counts().items() if ch == "x" and n}


@pytest.mark.parametrize(
    ("x", "age", "expected"),
    [
        (5.0, 0.1, {}),
        (NAN, 6.0, {"stale": 1}),  # stale before nan
        (50.0, 6.0, {"stale": 1}),  # stale before range
        (NAN, 0.1, {"nan": 1}),
        (-0.5, 0.1, {"range": 1}),
        (10.5, 0.1, {"range": 1}),
        (10.0, 0.1, {}),  # the limits themselves are plausible
    ],
)
def test_each_reason_with_precedence(x: float, age: float, expected: dict[str, int]) -> None:
    feed = Feeder(monitor())
    out = feed(x, age=age)
    assert feed.reasons() == expected
    if expected:
        assert math.isnan(out)
        assert feed.mon.faulty() == ["x"]
    else:
        assert out == x
        assert feed.mon.faulty() == []
    assert all(n == 0 for (ch, _), n in feed.mon.counts().items() if ch == "y")


def test_range_before_stuck_and_stuck_after_n_fresh_repeats() -> None:
    feed = Feeder(monitor())
    assert [feed(20.0) for _ in range(4)] == [pytest.approx(NAN, nan_ok=True)] * 4
    assert feed.reasons() == {"range": 4}  # repeated, but out of range comes first
    feed2 = Feeder(monitor())
    out = [feed2(7.0) for _ in range(4)]
    assert out[:2] == [7.0, 7.0]  # two repeats are fine
    assert all(math.isnan(v) for v in out[2:])
    assert feed2.reasons() == {"stuck": 2}


def test_good_values_pass_untouched() -> None:
    mon = monitor(channels=("x", "y", "z"))
    values = np.array([3.25, -1e9, 7.0])  # y and z have no range check
    out, events = mon.check(1.0, values, np.zeros(3), np.ones(3, bool))
    np.testing.assert_array_equal(out, values)
    assert events == []
    assert out is not values  # the caller's array is not modified...
    out, _ = mon.check(2.0, np.array([NAN, 1.0, 2.0]), np.zeros(3), np.ones(3, bool))
    assert math.isnan(out[0])
    assert list(out[1:]) == [1.0, 2.0]


def test_stuck_counts_only_fresh_readings() -> None:
    feed = Feeder(monitor(stuck=3))
    # A slow sensor: a new reading every 4th sample, the sampler repeats it in between.
    for _ in range(2):
        feed(4.0, fresh=True)
        for _ in range(3):
            assert feed(4.0, age=1.0, fresh=False) == 4.0
    assert feed.reasons() == {}  # 8 identical samples but only 2 fresh readings
    assert math.isnan(feed(4.0, fresh=True))  # the third identical fresh reading
    assert math.isnan(feed(4.0, age=1.0, fresh=False))  # stays stuck while nothing new comes
    assert feed(4.5) == 4.5  # a different fresh reading ends the run
    feed(4.5)
    feed(NAN)  # a NaN breaks a run as well
    assert feed(4.5) == 4.5
    assert feed.reasons() == {"stuck": 2, "nan": 1}


def test_stuck_check_is_off_without_a_configured_or_learned_limit() -> None:
    feed = Feeder(monitor(stuck=None))
    assert [feed(4.0) for _ in range(50)] == [4.0] * 50


def learned(
    mon: QualityMonitor,
    limit: int | None,
    noisy: float | None = None,
    jump: float | None = None,
    spike: float | None = None,
) -> QualityMonitor:
    """``mon`` running a model that learned ``limit``, ``noisy``, ``jump`` and ``spike`` for
    'x' (nothing for 'y')."""
    limits = LearnedLimits((limit, None), (noisy, None), (jump, None), (spike, None))
    mon.set_training(ModelChannels(np.array([5.0, 0.0]), np.array([1.0, 1.0]), limits))
    return mon


def test_the_models_learned_stuck_limit_applies_when_none_is_configured() -> None:
    feed = Feeder(learned(monitor(stuck=None), 4))
    out = [feed(4.0) for _ in range(6)]
    assert out[:3] == [4.0] * 3
    assert all(math.isnan(v) for v in out[3:])  # the 4th identical reading is stuck
    assert [(e.state, e.reason) for e in feed.events] == [("open", "stuck")]


def test_a_configured_stuck_limit_beats_the_learned_one() -> None:
    feed = Feeder(learned(monitor(stuck=8), 3))
    out = [feed(4.0) for _ in range(9)]
    assert out[:7] == [4.0] * 7
    assert all(math.isnan(v) for v in out[7:])


def test_streaming_check_and_offline_filter_agree_on_what_is_stuck() -> None:
    """The agent's data quality and ``replay``'s LearnedChecks flag the same readings."""
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(5.0, 1.0, 400), 0)  # coarse: short natural repeats
    x[98] = x[99] + 1.0
    x[100:160] = x[99]  # a frozen transmitter: 61 identical readings from row 99
    x[250] = NAN
    feed = Feeder(learned(monitor(stuck=None), 12))
    streamed = np.array([feed(v) for v in x])
    checks = LearnedChecks(LearnedLimits((12, None), *((None, None),) * 3))
    offline, rows = checks.apply(np.column_stack([x, np.arange(x.size)]))
    assert np.array_equal(np.isnan(streamed), np.isnan(offline[:, 0]))
    assert np.array_equal(rows, np.isnan(offline[:, 0]) & ~np.isnan(x))
    assert rows[110:160].all()
    assert rows.sum() == 61 - 11


def test_streaming_and_offline_agree_with_both_learned_limits() -> None:
    """Sample by sample, the readings data quality calls stuck or noisy are the rows replay's
    LearnedChecks mark, a noise burst just after a stuck stretch included."""
    rng = np.random.default_rng(11)
    x = 5.0 + rng.normal(0.0, 0.05, 600)
    x[100:140] = x[99]  # stuck
    x[140:200] = 5.0 + rng.normal(0.0, 0.6, 60)  # then noisy
    x[400:430] = 5.0 + rng.normal(0.0, 0.5, 30)  # noisy alone
    x[500] = NAN
    feed = Feeder(learned(monitor(stuck=None), 12, noisy=0.2))
    flagged = []
    for v in x:
        before = sum(feed.reasons().values())
        feed(v)
        flagged.append(sum(feed.reasons().values()) - before - int(math.isnan(v)))
    checks = LearnedChecks(LearnedLimits((12, None), (0.2, None), *((None, None),) * 2))
    _, rows = checks.apply(np.column_stack([x, np.arange(600.0)]))
    assert np.array_equal(np.array(flagged, bool), rows)
    assert rows[111:140].all()
    assert rows[150:200].any()
    assert rows[405:430].any()


def test_a_noisy_channel_is_reported_and_its_readings_kept() -> None:
    rng = np.random.default_rng(4)
    x = 5.0 + np.r_[rng.normal(0.0, 0.01, 40), rng.normal(0.0, 0.2, 30), rng.normal(0.0, 0.01, 40)]
    feed = Feeder(learned(monitor(stuck=None), None, noisy=0.05))
    out = np.array([feed(v) for v in x])
    assert np.array_equal(out, x)  # nothing blanked
    assert [(e.state, e.reason) for e in feed.events] == [("open", "noisy"), ("close", "noisy")]
    assert "noise level" in (feed.events[0].detail or "")
    assert feed.events[0].start > 1040.0  # not before the burst
    checks = LearnedChecks(LearnedLimits((None,) * 2, (0.05, None), (None,) * 2, (None,) * 2))
    offline = checks.apply(np.column_stack([x, x]))[1]
    assert offline.sum() == feed.reasons()["noisy"]


def test_a_jump_is_reported_and_its_reading_kept() -> None:
    x = np.r_[np.full(20, 5.0) + np.arange(20) * 0.01, 9.0, np.full(20, 5.2)]
    feed = Feeder(learned(monitor(stuck=None), None, jump=1.0))
    out = np.array([feed(v) for v in x])
    assert np.array_equal(out, x)  # nothing blanked
    assert [(e.state, e.reason) for e in feed.events] == [("open", "jump"), ("close", "jump")]
    assert feed.events[0].start == 1021.0  # the spike's sample
    assert "jumped 3.81 from the reading before (5.19)" in (feed.events[0].detail or "")
    assert feed.reasons()["jump"] == 1


def test_streaming_and_offline_agree_on_jumps() -> None:
    """A spike, a level shift and a jump after a stuck stretch: the agent and replay's
    LearnedChecks flag the same readings."""
    rng = np.random.default_rng(13)
    x = 5.0 + rng.normal(0.0, 0.05, 300)
    x[50] = 8.0
    x[100:140] += 2.0
    x[200:230] = x[199]  # stuck: blanked, and the step after it not judged...
    x[230] = 9.0  # ...so this is the reference, and the way back from it a jump
    x[260:263] = [1.0, 9.0, 1.0]
    feed = Feeder(learned(monitor(stuck=None), 12, noisy=0.5, jump=1.0))
    flagged = []
    for v in x:
        before = sum(feed.reasons().values())
        feed(v)
        flagged.append(sum(feed.reasons().values()) - before)
    limits = LearnedLimits((12, None), (0.5, None), (1.0, None), (None, None))
    _, rows = LearnedChecks(limits).apply(np.column_stack([x, np.arange(300.0)]))
    assert np.array_equal(np.array(flagged, bool), rows)
    assert rows[[50, 100, 140, 260, 261, 262]].all()
    assert not rows[[51, 101, 141]].any()  # a spike's way back; a new level's second reading


def test_a_spike_is_reported_one_sample_late_with_its_own_start() -> None:
    x = np.r_[np.full(20, 5.0), 9.0, np.full(20, 5.0)]
    feed = Feeder(learned(monitor(stuck=None), None, spike=1.0))
    out = np.array([feed(v) for v in x])
    assert np.array_equal(out, x)  # nothing blanked
    assert [(e.state, e.reason) for e in feed.events] == [("open", "spike"), ("close", "spike")]
    opened = feed.events[0]
    assert opened.start == 1021.0  # the spike's sample...
    assert opened.created == 1022.0  # ...told when the next one came back
    assert "came back at the next" in (opened.detail or "")
    assert feed.reasons()["spike"] == 1


def test_a_new_model_without_spike_limits_reports_no_more_spikes() -> None:
    mon = learned(monitor(stuck=None), None, spike=1.0)
    feed = Feeder(mon)
    for v in (5.0, 5.0, 9.0, 5.0):
        feed(v)
    learned(mon, None)  # a new model, without a spike limit
    for _ in range(3 * CLEAR):
        feed(5.0)
    assert [(e.state, e.reason) for e in feed.events] == [("open", "spike"), ("close", "spike")]


def test_streaming_and_offline_agree_on_spikes() -> None:
    """The samples the agent reports as spikes (by their events' start) are the rows replay's
    LearnedChecks mark; one already reported as a jump is not reported twice."""
    rng = np.random.default_rng(14)
    x = 5.0 + rng.normal(0.0, 0.05, 300)
    x[[40, 90, 91, 150, 230]] += [3.0, -3.0, 3.0, 3.0, -3.0]
    x[200:215] = x[199]  # stuck: blanked, no spike next to it judged
    x[215] = 9.0  # next to a blanked reading: not judged
    feed = Feeder(learned(monitor(stuck=None), 12, spike=1.0, jump=5.0))
    for v in x:
        feed(v)
    starts = sorted(int(e.start - 1001.0) for e in feed.events if e.state == "open")
    limits = LearnedLimits((12, None), (None, None), (5.0, None), (1.0, None))
    _, rows = LearnedChecks(limits).apply(np.column_stack([x, np.arange(300.0)]))
    assert np.flatnonzero(rows).tolist() == [40, 90, 91, 150, *range(210, 215), 230]
    assert [r for r in starts if r not in range(200, 216)] == [40, 90, 150, 230]


def test_learned_limits_can_be_switched_off() -> None:
    checks = {"x": ChannelQuality(stale_s=5.0)}
    mon = QualityMonitor(["x", "y"], checks, QualityDefaults(learned=False), "press-7")
    feed = Feeder(learned(mon, 3, noisy=1e-9))
    assert [feed(4.0 + (i % 2)) for i in range(10)] == [4.0 + (i % 2) for i in range(10)]
    assert [feed(4.0) for _ in range(10)] == [4.0] * 10
    assert feed.events == []


def test_never_read_channel_is_stale_only_after_stale_s_from_start() -> None:
    mon = monitor(channels=("x",))
    nothing = np.array([NAN])
    _, events = mon.check(100.0, nothing, np.array([INF]), np.array([False]))
    assert events == []  # start-up: no reading yet is not a fault
    _, events = mon.check(104.0, nothing, np.array([INF]), np.array([False]))
    assert events == []
    _, events = mon.check(106.0, nothing, np.array([INF]), np.array([False]))
    assert [(e.state, e.reason) for e in events] == [("open", "stale")]
    assert events[0].detail == "no fresh reading for 6.0 s (limit 5 s)"


def test_open_update_close_with_hysteresis() -> None:
    feed = Feeder(monitor(stuck=None))
    feed(5.0)
    t_first_bad = feed.t + 1
    feed(NAN)  # open: nan
    for _ in range(CLEAR - 1):
        feed(50.0)  # a new reason is reported once it has held for CLEAR samples
    assert [e.state for e in feed.events] == ["open"]
    feed(50.0)
    assert [e.state for e in feed.events] == ["open", "update"]
    feed(5.0)
    feed(5.0)  # fewer than CLEAR good samples do not close it
    t_last_bad = feed.t + 1
    feed(-1.0)  # bad again: the same episode, and the good run starts over
    for _ in range(CLEAR - 1):
        feed(5.0)
    assert [e.state for e in feed.events] == ["open", "update"]
    assert feed.mon.faulty() == ["x"]
    feed(5.0)
    assert [e.state for e in feed.events] == ["open", "update", "close"]
    assert feed.mon.faulty() == []
    opened, updated, closed = feed.events
    assert (opened.reason, updated.reason, closed.reason) == ("nan", "range", "range")
    assert opened.detail == "the sensor reports no value (NaN)"
    assert updated.detail == "value 50 above max 10"
    assert closed.detail == "good for 3 samples; 5 samples flagged"
    assert len({opened.episode, updated.episode, closed.episode}) == 1
    assert len({opened.id, updated.id, closed.id}) == 3
    assert {e.start for e in feed.events} == {t_first_bad}
    # end: the last bad sample; the CLEAR good ones after it only prove the fault over
    assert (opened.end, updated.end, closed.end) == (None, None, t_last_bad)
    assert closed.created == feed.t
    assert all(e.kind == "sensor_fault" and e.channel == "x" for e in feed.events)
    assert all(e.severity == SEVERITY_WARNING for e in feed.events)
    assert feed.reasons() == {"nan": 1, "range": 4}

    feed(NAN)  # a new fault is a new episode
    assert feed.events[-1].state == "open"
    assert feed.events[-1].episode != opened.episode


def test_flapping_channel_gives_bounded_events() -> None:
    feed = Feeder(monitor(stuck=None))
    for i in range(500):
        feed(NAN if i % 2 else 5.0)  # bad every other sample
    assert [e.state for e in feed.events] == ["open"]
    for i in range(500):
        feed([NAN, 50.0][i % 2])  # flipping between two reasons every sample
    assert [e.state for e in feed.events] == ["open"]
    for _ in range(CLEAR):
        feed(50.0)  # one reason that holds
    for _ in range(CLEAR):
        feed(5.0)
    assert [(e.state, e.reason) for e in feed.events] == [
        ("open", "nan"),
        ("update", "range"),
        ("close", "range"),
    ]
    assert feed.reasons() == {"nan": 500, "range": 250 + CLEAR}


def test_events_serialize() -> None:
    feed = Feeder(monitor())
    feed(11.0)
    for k in range(CLEAR):
        feed(5.0 + k)
    opened, closed = (json.loads(e.to_json()) for e in feed.events)
    assert opened["kind"] == "sensor_fault"
    assert opened["state"] == "open"
    assert opened["machine_id"] == "press-7"
    assert opened["channel"] == "x"
    assert opened["reason"] == "range"
    assert opened["detail"] == "value 11 above max 10"
    assert opened["start"] == "1970-01-01T00:16:41.000Z"
    assert "end" not in opened
    assert closed["end"] == opened["start"]
    assert closed["episode"] == opened["episode"]


def test_counts_cover_every_channel_and_reason() -> None:
    mon = monitor()
    assert mon.counts() == {
        (ch, r): 0
        for ch in ("x", "y")
        for r in ("stale", "nan", "range", "stuck", "noisy", "jump", "spike")
    }
    with pytest.raises(ValueError, match="expected 2 channels"):
        mon.check(0.0, np.zeros(3), np.zeros(3), np.ones(3, bool))


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_infinite_reading_is_missing_not_a_value(bad: float) -> None:
    mon = monitor(channels=("x", "y"))
    out, events = mon.check(0.0, np.array([1.0, bad]), np.zeros(2), np.ones(2, bool))
    assert np.isnan(out[1])
    assert out[0] == 1.0
    assert [(e.channel, e.reason, e.state) for e in events] == [("y", "nan", "open")]


FLT_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize("bad", [FLT_MAX, -FLT_MAX, 1e39, -1e39, 2.0**31 * 1e30])
def test_implausible_value_is_a_range_fault_without_min_max(bad: float) -> None:
    """The float32 'no reading' marker or 1e39 on a serial line would overflow the model's
    float32 input; with the model's training statistics it is a range fault on any channel,
    and the value never reaches the pipeline."""
    mon = QualityMonitor(
        ["flow"], {}, QualityDefaults(clear_samples=CLEAR), "pump-3",
        training=ModelChannels(np.array([12.0]), np.array([0.5]), LearnedLimits.none(1)),
    )
    fresh = np.array([True])
    ok, events = mon.check(1.0, np.array([12.3]), np.array([0.1]), fresh)
    assert ok[0] == 12.3
    assert not events
    out, events = mon.check(2.0, np.array([bad]), np.array([0.1]), fresh)
    assert np.isnan(out[0])
    assert [(e.state, e.reason) for e in events] == [("open", "range")]
    assert "implausible" in (events[0].detail or "")
    assert mon.faulty() == ["flow"]


def test_plausibility_bound_leaves_real_excursions_alone() -> None:
    """A real overload, even a thousand training scales out, is the machine's business."""
    mon = QualityMonitor(
        ["flow"], {}, QualityDefaults(), "pump-3",
        training=ModelChannels(np.array([12.0]), np.array([0.5]), LearnedLimits.none(1)),
    )
    out, events = mon.check(1.0, np.array([12.0 + 1000 * 0.5]), np.array([0.1]), np.array([True]))
    assert out[0] == 512.0
    assert not events
