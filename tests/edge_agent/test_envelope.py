"""The screen's envelope: how far outside the training windows' feature ranges a window lies,
how the forest file carries it, and how it joins the forest's score."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge_agent.detect.envelope import Envelope
from edge_agent.detect.forest import FlatForest
from edge_agent.errors import BundleError
from trainer.forest import fit_forest


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(3000, 6)).astype(np.float32)


def test_exceedance_is_relative_to_the_median_and_at_most_zero_inside() -> None:
    env = Envelope(np.array([-1.0, 0.0]), np.array([0.0, 1.0]), np.array([2.0, 5.0]))
    x = np.array(
        [
            [0.5, 3.0],  # inside on both
            [3.0, 3.0],  # feature 0 one half-width (2) above its top: 0.5
            [-1.5, 3.0],  # feature 0 half a half-width (1) below its bottom: 0.5
            [0.0, 9.0],  # feature 1 4 above its top, half-width 4: 1.0
            [-3.0, 13.0],  # both outside: the larger, 2.0 for feature 1
        ],
        np.float32,
    )
    got = env.exceedance(x)
    assert got[0] <= 0.0
    np.testing.assert_allclose(got[1:], [0.5, 0.5, 1.0, 2.0])
    assert np.isnan(env.exceedance(np.array([[np.nan, 3.0]], np.float32))[0])


def test_envelope_of_training_features_holds_every_training_row(train: np.ndarray) -> None:
    env = Envelope.of(train)
    assert (env.exceedance(train) <= 0.0).all()
    np.testing.assert_array_equal(env.lo, train.min(axis=0))
    np.testing.assert_array_equal(env.hi, train.max(axis=0))
    with_nan = np.concatenate([train, np.full((1, 6), np.nan, np.float32)])
    np.testing.assert_array_equal(Envelope.of(with_nan).hi, env.hi)
    with pytest.raises(ValueError, match="no finite feature rows"):
        Envelope.of(np.full((2, 6), np.nan, np.float32))


def test_screen_score_puts_windows_outside_above_every_forest_score(train: np.ndarray) -> None:
    _, plain = fit_forest(train, n_trees=20, max_samples=64, seed=1)
    _, forest = fit_forest(train, n_trees=20, max_samples=64, seed=1, envelope=True)
    x = train[:50].copy()
    x[::2, 3] = train[:, 3].max() + 1.0  # every other window outside on one feature
    screen = forest.screen_score(x)
    assert (screen[::2] > 1.0).all()
    np.testing.assert_array_equal(screen[1::2], forest.score(x)[1::2])
    np.testing.assert_array_equal(plain.screen_score(x), plain.score(x))  # no envelope


def test_round_trip_and_refusal_of_bad_envelope_arrays(train: np.ndarray) -> None:
    _, forest = fit_forest(train, n_trees=20, max_samples=64, seed=1, envelope=True)
    again = FlatForest.from_bytes(forest.to_bytes())
    assert again.envelope is not None
    np.testing.assert_array_equal(again.screen_score(train), forest.screen_score(train))
    env = forest.envelope
    assert env is not None
    for bad, why in (
        (Envelope(env.lo[:3], env.mid[:3], env.hi[:3]), "shapes"),
        (Envelope(env.hi, env.mid, env.lo), "not ordered"),
        (Envelope(env.lo, env.mid, np.full_like(env.hi, np.inf)), "non-finite"),
    ):
        forged = dataclasses.replace(forest, envelope=bad)
        with pytest.raises(BundleError, match=why):
            FlatForest.from_bytes(forged.to_bytes(), source="forest.npz")


def test_an_upper_quantile_edge_for_a_residual_feature(train: np.ndarray) -> None:
    env = Envelope.of(train, {2: 0.99})
    assert env.hi[2] == np.quantile(train[:, 2].astype(np.float64), 0.99)
    np.testing.assert_array_equal(np.delete(env.hi, 2), np.delete(train.max(axis=0), 2))
    outside = env.exceedance(train) > 0
    assert 0.005 < outside.mean() < 0.015  # about the 1 % of rows above that edge
    with pytest.raises(ValueError, match=r"upper quantile 0\.2 of feature 1"):
        Envelope.of(train, {1: 0.2})


def test_a_widened_envelope_moves_each_edge_that_many_times_farther_from_the_median(
    train: np.ndarray,
) -> None:
    env = Envelope.of(train)
    same = env.widened(1.0)
    for a, b in ((same.lo, env.lo), (same.mid, env.mid), (same.hi, env.hi)):
        np.testing.assert_array_equal(a, b)
    wide = env.widened(2.0)
    np.testing.assert_array_equal(wide.mid, env.mid)
    np.testing.assert_allclose(wide.hi - wide.mid, 2.0 * (env.hi - env.mid))
    np.testing.assert_allclose(wide.mid - wide.lo, 2.0 * (env.mid - env.lo))
    half = env.hi[3] - env.mid[3]
    x = np.repeat(env.mid[None, :].astype(np.float32), 2, axis=0)
    x[0, 3] = env.mid[3] + 1.5 * half  # outside the training range, inside twice its reach
    x[1, 3] = env.mid[3] + 2.5 * half  # outside both
    assert (env.exceedance(x) > 0).all()
    np.testing.assert_array_equal(wide.exceedance(x) > 0, [False, True])
    for bad in (0.5, np.nan):
        with pytest.raises(ValueError, match="at least 1"):
            env.widened(bad)
