"""The adapting level (edge_agent.detect.baseline): slow drift followed, faults not absorbed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.detect.baseline import START_SAMPLES, LevelBaseline, LevelState, adapt_rate

TAU_S, MAX_STEP, MAX_OFFSET = 900.0, 2.0, 12.0


def _state(channels: list[str], adapting: list[str]) -> LevelState:
    spec = LevelBaseline(
        channels=adapting, time_constant_s=TAU_S, max_step=MAX_STEP, max_offset=MAX_OFFSET
    )
    return LevelState.of(spec, channels, 1.0)


def _judge(state: LevelState, z: np.ndarray, imputed: np.ndarray | None = None) -> np.ndarray:
    x = np.ascontiguousarray(z, np.float32).copy()
    mask = np.zeros(x.shape, np.bool_) if imputed is None else imputed
    state.apply(x, mask)
    return x


def test_a_warm_up_is_followed_and_a_fixed_channel_left_alone() -> None:
    t = np.arange(7_200.0)
    rng = np.random.default_rng(0)
    warm = 8.0 * t / t[-1] + rng.normal(0, 0.3, t.size)  # 8 spreads in 2 hours
    fixed = rng.normal(0, 1, t.size)
    z = np.stack([warm, fixed], axis=1)
    out = _judge(_state(["warm", "fixed"], ["warm"]), z)
    # Lag of a ramp at rate r behind a level with time constant tau: about r * tau.
    lag = 8.0 / t[-1] * TAU_S
    assert abs(out[-600:, 0].mean() - lag) < 0.2
    assert abs(out[-600:, 0].mean()) < 1.5  # was 8 spreads away from the training level
    np.testing.assert_array_equal(out[:, 1], z[:, 1].astype(np.float32))


def test_a_step_is_not_absorbed_while_it_is_detected() -> None:
    settled = 2_000  # past the warm-up (1 / rate = 900 samples)
    z = np.zeros((settled + 300, 1))
    z[settled:, 0] = 2.0  # a level shift of two spreads, five minutes long
    out = _judge(_state(["a"], ["a"]), z)
    # After one minute the shift still shows at 93 % and after five at 72 % (exp(-t/tau)).
    assert out[settled + 60, 0] == pytest.approx(2.0 * np.exp(-60 / TAU_S), rel=0.01)
    assert out[-1, 0] > 0.7 * 2.0


def test_the_level_starts_where_the_machine_stands() -> None:
    """Started on a machine 8 spreads above its training level (warmed up since), the level
    is the mean of its first START_SAMPLES samples: judged from where it stands at once."""
    rng = np.random.default_rng(2)
    z = 8.0 + rng.normal(0, 1.0, (1_200, 1))
    state = _state(["a"], ["a"])
    out = _judge(state, z)
    assert out[0, 0] == np.float32(z[0, 0])  # the first sample is judged against training
    assert abs(out[1:, 0].mean()) < 0.3  # then noise only, no 8-spread offset
    start = int(START_SAMPLES)
    assert np.abs(out[start:, 0]).max() < 4.5
    fresh = _state(["a"], ["a"])
    _judge(fresh, z[:start])
    assert fresh.level[0] == pytest.approx(z[:start].mean(), rel=1e-6)


def test_a_glitch_cannot_carry_a_fresh_level() -> None:
    state = _state(["a"], ["a"])
    _judge(state, np.array([[1e6]]))
    assert state.level[0] == MAX_OFFSET  # capped at the level's reach...
    _judge(state, np.zeros((int(START_SAMPLES) - 1, 1)))
    assert state.level[0] == pytest.approx(MAX_OFFSET / START_SAMPLES)  # ...and averaged out


def test_one_sample_moves_the_level_by_a_bounded_step_and_reach_is_capped() -> None:
    state = _state(["a"], ["a"])
    _judge(state, np.zeros((2_000, 1)))  # settled at the training level
    before = state.level[0]
    out = _judge(state, np.array([[1e6]]))
    assert out[0, 0] == pytest.approx(1e6)  # judged against the old level...
    assert state.level[0] - before == pytest.approx(adapt_rate(1.0, TAU_S) * MAX_STEP)
    _judge(state, np.full((200_000, 1), 1e6))
    assert state.level[0] == MAX_OFFSET  # never past max_offset


def test_held_samples_are_judged_but_do_not_move_the_level() -> None:
    state = _state(["a"], ["a"])
    out = _judge(state, np.full((50, 1), 3.0), np.ones((50, 1), np.bool_))
    assert (out == 3.0).all()  # nothing measured yet: judged against the training mean
    assert state.seen[0] == 0.0
    _judge(state, np.zeros((2_000, 1)))
    level = state.level[0]
    out = _judge(state, np.full((50, 1), 3.0), np.ones((50, 1), np.bool_))
    assert (out == np.float32(3.0 - level)).all()
    assert state.level[0] == level


def test_any_split_of_the_rows_gives_the_same_bits() -> None:
    rng = np.random.default_rng(1)
    z = np.cumsum(rng.normal(0, 0.2, (3_000, 3)), axis=0)
    imputed = rng.random(z.shape) < 0.05
    whole = _judge(_state(["a", "b", "c"], ["a", "c"]), z, imputed)
    state = _state(["a", "b", "c"], ["a", "c"])
    cuts = [0, 1, 2, 700, 701, 2_999, 3_000]
    parts = [_judge(state, z[a:b], imputed[a:b]) for a, b in itertools.pairwise(cuts)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_a_baseline_naming_an_unknown_channel_is_refused() -> None:
    spec = LevelBaseline(channels=["nope"], time_constant_s=1.0, max_step=1.0, max_offset=1.0)
    with pytest.raises(ValueError, match="does not have: \\['nope'\\]"):
        spec.rates(["a", "b"], 1.0)
    with pytest.raises(ValidationError):
        LevelBaseline(channels=[], time_constant_s=1.0, max_step=1.0, max_offset=1.0)
    assert not LevelState.of(None, ["a"], 1.0).active
