"""The PCA T²/SPE baseline (trainer.evaluate.pca_monitor) on a plant whose structure is known.

Four channels in two tightly correlated pairs (a flow and the pressure it makes, a motor's
current and temperature): two components carry nearly all the variance. A broken relation
inside the range of every channel is SPE's to catch; a shift along the normal relation is T²'s.
"""

from __future__ import annotations

import numpy as np
import pytest

from trainer.evaluate.pca_monitor import EXPLAINED_VARIANCE, fit_pca_monitor

NOISE = 0.1


def plant(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(2, n))
    noise = rng.normal(scale=NOISE, size=(4, n))
    # Different units and offsets per channel: the monitor must standardise.
    return np.column_stack(
        [
            10 + 2 * (a + noise[0]),
            3 + 0.5 * (a + noise[1]),
            50 + b + noise[2],
            7 + 4 * (b + noise[3]),
        ]
    )


def in_training_range(train: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The per-channel check a PLC alarm would make: every channel within its trained range."""
    return np.all((rows >= train.min(axis=0)) & (rows <= train.max(axis=0)), axis=1)


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    return plant(5_000, seed=0)


def test_components_follow_the_explained_variance_rule(train: np.ndarray) -> None:
    monitor = fit_pca_monitor(train)
    assert monitor.components.shape == (2, 4)
    assert monitor.explained >= EXPLAINED_VARIANCE
    summary = monitor.summary()
    assert (summary["components"], summary["channels"]) == (2, 4)


def test_normal_rows_alarm_about_one_percent(train: np.ndarray) -> None:
    _, alarm = fit_pca_monitor(train).score(plant(20_000, seed=1))
    assert alarm.mean() < 0.02


def test_a_broken_correlation_is_caught_by_spe_and_not_by_the_ranges(train: np.ndarray) -> None:
    monitor = fit_pca_monitor(train)
    # Flow up one sigma, its pressure down one sigma: each value is ordinary on its own.
    broken = np.array([[10 + 2 * 1.0, 3 - 0.5 * 1.0, 50.0, 7.0]])
    assert in_training_range(train, broken).all()
    t2, spe = monitor.statistics(broken)
    assert spe[0] > 10 * monitor.spe_limit
    assert t2[0] < monitor.t2_limit
    assert monitor.score(broken)[1].all()


def test_a_mean_shift_along_the_relation_is_caught_by_t2(train: np.ndarray) -> None:
    monitor = fit_pca_monitor(train)
    # Both pairs shifted 3.5 sigma along their own relation: the structure holds, the level not.
    shifted = np.array([[10 + 2 * 3.5, 3 + 0.5 * 3.5, 50 + 3.5, 7 + 4 * 3.5]])
    t2, spe = monitor.statistics(shifted)
    assert t2[0] > monitor.t2_limit
    assert spe[0] < monitor.spe_limit
    assert monitor.score(shifted)[1].all()


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="more training rows than channels"):
        fit_pca_monitor(np.zeros((3, 4)))
    rows = plant(100, seed=2)
    rows[7, 2] = np.nan
    with pytest.raises(ValueError, match=r"row 7, channel 2"):
        fit_pca_monitor(rows)
    monitor = fit_pca_monitor(plant(100, seed=3))
    with pytest.raises(ValueError, match="3 channels, the monitor was fitted on 4"):
        monitor.score(np.zeros((2, 3)))


def test_one_channel_has_no_residual_and_still_works() -> None:
    rng = np.random.default_rng(4)
    monitor = fit_pca_monitor(rng.normal(size=(500, 1)))
    _, alarm = monitor.score(np.array([[0.0], [6.0]]))
    assert alarm.tolist() == [False, True]
