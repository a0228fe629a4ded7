"""The Gaussian mechanism's privacy accounting (``edge_agent.learn.accountant``): a value worked
out by hand for one round, composition over rounds, and the directions it must move in."""

from __future__ import annotations

import math

import pytest

from edge_agent.learn.accountant import (
    DEFAULT_ORDERS,
    compose,
    epsilon,
    gaussian_rdp,
    rdp_to_dp,
)

DELTA = 1e-5


def test_one_round_matches_the_hand_computed_value() -> None:
    # z = 1, delta = 1e-5: eps(alpha) = alpha / 2 + ln(1e5) / (alpha - 1).
    # alpha = 5: 2.5 + 11.5129 / 4 = 5.3782; alpha = 6: 3 + 11.5129 / 5 = 5.3026;
    # alpha = 7: 3.5 + 11.5129 / 6 = 5.4188; on the fine grid alpha = 4.95 gives 5.3897.
    got = epsilon([1.0], DELTA)
    assert got.order == 6.0
    assert got.epsilon == pytest.approx(3 + math.log(1e5) / 5, abs=1e-12)
    assert got.epsilon == pytest.approx(5.3026, abs=1e-4)
    # Never below the continuous optimum 1/(2 z^2) + sqrt(2 ln(1/delta)) / z, and close to it.
    bound = 0.5 + math.sqrt(2 * math.log(1 / DELTA))
    assert bound <= got.epsilon <= bound * 1.01


def test_rdp_per_order_and_sensitivity() -> None:
    assert gaussian_rdp(2.0, [2.0, 10.0]) == [0.25, 1.25]  # alpha / (2 z^2)
    assert gaussian_rdp(2.0, [2.0], sensitivity=2.0) == [1.0]  # alpha s^2 / (2 z^2)
    assert gaussian_rdp(0.0, [2.0]) == [math.inf]
    eps, order = rdp_to_dp([math.inf, math.inf], [2.0, 3.0], DELTA)
    assert eps == math.inf
    assert order is None


def test_rounds_compose_by_adding() -> None:
    assert compose([1.0, 2.0], [3.0]) == [pytest.approx(1.5 + 0.375)]
    # T rounds of z are one round of z / sqrt(T).
    assert epsilon([2.0] * 16, DELTA).epsilon == pytest.approx(epsilon([0.5], DELTA).epsilon)
    assert epsilon([2.0] * 16, DELTA).rounds == 16
    assert epsilon([1.0, 0.0], DELTA).epsilon == math.inf  # one round without noise: no bound


def test_epsilon_grows_with_rounds_and_falls_with_noise() -> None:
    by_rounds = [epsilon([1.0] * t, DELTA).epsilon for t in (1, 2, 5, 10, 50, 200)]
    assert by_rounds == sorted(by_rounds)
    assert len(set(by_rounds)) == len(by_rounds)
    by_noise = [epsilon([z] * 10, DELTA).epsilon for z in (0.5, 1.0, 2.0, 4.0, 8.0)]
    assert by_noise == sorted(by_noise, reverse=True)
    assert len(set(by_noise)) == len(by_noise)
    # A larger delta is a weaker claim: a smaller epsilon.
    assert epsilon([1.0], 1e-3).epsilon < epsilon([1.0], 1e-7).epsilon


def test_grid_and_bad_inputs() -> None:
    assert min(DEFAULT_ORDERS) > 1
    assert list(DEFAULT_ORDERS) == sorted(set(DEFAULT_ORDERS))
    with pytest.raises(ValueError, match="delta"):
        epsilon([1.0], 0.0)
    with pytest.raises(ValueError, match="no round"):
        epsilon([], DELTA)
    with pytest.raises(ValueError, match="noise multiplier"):
        gaussian_rdp(-1.0)
    with pytest.raises(ValueError, match="orders"):
        gaussian_rdp(1.0, [1.0])
