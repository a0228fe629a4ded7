"""Privacy accounting of the Gaussian mechanism: Rényi DP, composed over rounds, as (ε, δ).

Pipeline position: fleet learning (issue 11), beside the privacy options. The desk
(``trainer.federate.privacy``) states the central guarantee of a federated run with it, over
the rounds of the run's lineage; ``edge_agent.learn.privacy.local_epsilon`` states what one
gateway's noised updates reveal. Pure arithmetic (no numpy), so either side can import it.

The Gaussian mechanism with L2 sensitivity ``s`` and noise standard deviation ``z * s`` (``z``
the noise multiplier) is (α, α / (2 z²))-RDP for every order α > 1 (Mironov 2017,
"Rényi Differential Privacy", Prop. 7). RDP composes by adding: rounds of multipliers
z₁ … z_T give α/2 · Σ 1/zᵢ². It converts to (ε, δ)-DP by ε = min over α of
RDP(α) + log(1/δ) / (α − 1) (Mironov 2017, Prop. 3), minimised here over a fixed grid of
orders (:data:`DEFAULT_ORDERS`); the continuous optimum for one round,
1/(2z²) + √(2 log(1/δ)) / z, is a lower bound that the grid approaches within a percent.
No amplification by subsampling is claimed: every round is counted as if the gateway took part
with all its data, which is the case when the desk asks the whole fleet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Orders α: fine steps near 1 (where few rounds of large noise have their optimum), then
# integers, then a few large ones for tiny noise. The same spirit as the usual DP libraries'.
FINE_ORDER_STEP = 0.05
FINE_ORDER_STEPS = 79  # 1.05 .. 4.95
INTEGER_ORDERS = range(5, 64)
LARGE_ORDERS = (64, 80, 96, 128, 192, 256, 512, 1024)
DEFAULT_ORDERS: tuple[float, ...] = (
    tuple(round(1 + FINE_ORDER_STEP * i, 2) for i in range(1, FINE_ORDER_STEPS + 1))
    + tuple(float(a) for a in INTEGER_ORDERS)
    + tuple(float(a) for a in LARGE_ORDERS)
)


@dataclass(frozen=True)
class Guarantee:
    """(ε, δ)-DP over ``rounds`` rounds; ``epsilon`` is ``inf`` when a round had no noise."""

    epsilon: float
    delta: float
    order: float | None  # the RDP order that gave ε (None: no finite bound)
    rounds: int


def gaussian_rdp(
    noise_multiplier: float, orders: Sequence[float] = DEFAULT_ORDERS, *, sensitivity: float = 1.0
) -> list[float]:
    """RDP ε(α) of one Gaussian mechanism of noise ``noise_multiplier`` × the clip bound, for
    an L2 sensitivity of ``sensitivity`` × the clip bound (1: add or remove one client;
    2: replace one). A multiplier of 0 (no noise) gives ``inf``."""
    if noise_multiplier < 0 or sensitivity <= 0:
        raise ValueError(
            f"noise multiplier must be >= 0 and sensitivity > 0, got {noise_multiplier}, "
            f"{sensitivity}"
        )
    _check_orders(orders)
    if noise_multiplier == 0:
        return [math.inf] * len(orders)
    return [a * sensitivity**2 / (2 * noise_multiplier**2) for a in orders]


def compose(
    noise_multipliers: Sequence[float],
    orders: Sequence[float] = DEFAULT_ORDERS,
    *,
    sensitivity: float = 1.0,
) -> list[float]:
    """RDP of the rounds of ``noise_multipliers`` run one after the other (sums per order)."""
    total = [0.0] * len(orders)
    for z in noise_multipliers:
        rdp = gaussian_rdp(z, orders, sensitivity=sensitivity)
        total = [t + r for t, r in zip(total, rdp, strict=True)]
    return total


def rdp_to_dp(
    rdp: Sequence[float], orders: Sequence[float], delta: float
) -> tuple[float, float | None]:
    """(ε, the order that gave it): min over α of rdp(α) + log(1/δ)/(α − 1)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if len(rdp) != len(orders):
        raise ValueError(f"{len(rdp)} RDP values for {len(orders)} orders")
    _check_orders(orders)
    best, best_order = math.inf, None
    for eps_a, a in zip(rdp, orders, strict=True):
        eps = eps_a + math.log(1 / delta) / (a - 1)
        if eps < best:
            best, best_order = eps, a
    return best, best_order


def epsilon(
    noise_multipliers: Sequence[float],
    delta: float,
    *,
    orders: Sequence[float] = DEFAULT_ORDERS,
    sensitivity: float = 1.0,
) -> Guarantee:
    """The (ε, δ) guarantee of Gaussian rounds of ``noise_multipliers`` composed (RDP)."""
    if not noise_multipliers:
        raise ValueError("no round to account for")
    eps, order = rdp_to_dp(compose(noise_multipliers, orders, sensitivity=sensitivity),
                           orders, delta)
    return Guarantee(eps, delta, order, len(noise_multipliers))


def _check_orders(orders: Sequence[float]) -> None:
    if not orders or min(orders) <= 1:
        raise ValueError("RDP orders must be > 1 (and at least one)")
