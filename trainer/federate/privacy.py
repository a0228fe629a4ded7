"""Central differential privacy of a federated round, and the guarantee of a run's lineage.

Position: ``trainer federate`` with ``--dp-noise-multiplier``. ``rules.make_aggregator`` hands
the round a :class:`GaussianMeanAggregator` instead of plain FedAvg: every accepted update is
clipped to L2 ≤ C (the settings' fixed ``clip_norm``: a bound that depends on the round's own
norms, such as the median multiple, would let one gateway move every other's clip), summed
with **equal weight** per gateway, and Gaussian noise of std z·C per coordinate is added to the
sum once, before dividing by the number K of accepted gateways. Equal weights because a
sample count is the gateway's own claim: weighting by it would let one gateway raise its share
of the sum past C, and the sensitivity with it. The server optimizer then steps on the noised
mean (post-processing).

The guarantee (:func:`privacy_report`, written to ``federate.json`` and printed): adding or
removing one gateway's whole update changes the sum by at most C, so a round is the Gaussian
mechanism of sensitivity C with std z·C, (α, α/(2z²))-RDP; the rounds of a run's lineage
compose (``FederationSummary.dp_noise_multipliers``: one entry per federated round, 0 for a
round without noise) and convert to (ε, δ) (``edge_agent.learn.accountant``). What it hides:
what a gateway's data did to the published model, from anyone who sees the model (the fleet,
whoever gets a bundle). Not hidden: whether the gateway took part and the count K (both are in
``federate.json``; with K treated as public, the "replace one" neighbour needs sensitivity 2C,
i.e. the ε of z/2), and nothing at all from the desk, which sees every update in the clear (for
that, local DP on the gateways, ``edge_agent.learn.privacy``). No amplification by subsampling
is claimed: the desk asks the whole fleet every round. A round with no noise anywhere in the
lineage leaves no finite ε (reported as null). The desk's noise is seeded from
``os.urandom``, never from a fixed seed: noise someone can regenerate can be subtracted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from pydantic import Field

from edge_agent.config.strict import StrictModel
from edge_agent.learn.accountant import epsilon
from trainer.federate.aggregate import Aggregator, check_update
from trainer.run_record import FederationSummary

DEFAULT_DP_DELTA = 1e-5  # well below 1/fleet for fleets up to 10,000 gateways
SEED_BYTES = 32  # entropy for the desk's noise generator
ADJACENCY = "add or remove one gateway's whole update (sensitivity C on the sum)"
SAMPLING = "none: every round counted in full (no amplification by subsampling claimed)"


class CentralPrivacy(StrictModel):
    """Central DP of a round: clip each update to ``clip_norm``, noise the sum."""

    clip_norm: float = Field(gt=0, description="L2 bound C every accepted update is clipped to")
    noise_multiplier: float = Field(
        gt=0, description="z: Gaussian noise of std z x C per coordinate is added to the sum"
    )
    delta: float = Field(
        default=DEFAULT_DP_DELTA, gt=0, lt=1, description="delta of the (epsilon, delta) stated"
    )


class PrivacyReport(StrictModel):
    """``federate.json``'s privacy section: the noise added and the guarantee it gives."""

    mechanism: str = Field(description="What was done to the updates")
    clip_norm: float = Field(description="C: L2 bound of every update, weight units")
    noise_multiplier: float = Field(description="z of this round")
    noise_std_sum: float = Field(description="Noise std per coordinate on the sum (z x C)")
    noise_std_mean: float = Field(description="Noise std per coordinate on the mean (z x C / K)")
    clients: int = Field(ge=0, description="K: gateways in the sum (treated as public)")
    adjacency: str = Field(description="Neighbouring inputs the guarantee is for")
    sampling: str = Field(description="Client sampling, and so the amplification claimed")
    lineage_rounds: int = Field(ge=1, description="Federated rounds in this run's lineage")
    private_rounds: int = Field(ge=0, description="Of those, rounds with central noise")
    delta: float = Field(description="delta of the guarantee")
    epsilon: float | None = Field(
        description="epsilon over the lineage's rounds (RDP composed); null: a round of the "
        "lineage had no noise, so there is no finite bound"
    )
    rdp_order: float | None = Field(description="RDP order alpha that gave epsilon")


class GaussianMeanAggregator:
    """Equal-weight mean of updates clipped to C, with N(0, (zC)²) added to the sum once."""

    rule = "fedavg"

    def __init__(
        self, size: int, privacy: CentralPrivacy, rng: np.random.Generator | None = None
    ) -> None:
        if size < 1:
            raise ValueError(f"parameter count must be >= 1, got {size}")
        self.size, self.privacy = size, privacy
        self.count = 0
        self.samples = 0  # reported only: the weights are equal
        self._sum = np.zeros(size, np.float64)
        self._rng = rng if rng is not None else desk_rng()
        self._result: npt.NDArray[np.float32] | None = None

    def add(self, update: npt.NDArray[np.float32], samples: int) -> None:
        if self._result is not None:
            raise ValueError("the noised mean was already drawn: no update can be added")
        check_update(update, self.size, samples)
        # Clipped here too, whatever the caller did: the guarantee must not rest on it.
        wide = update.astype(np.float64)
        norm = float(np.sqrt(np.einsum("i,i->", wide, wide)))
        if norm > self.privacy.clip_norm:
            wide *= self.privacy.clip_norm / norm
        self._sum += wide
        self.count += 1
        self.samples += samples

    def merge(self, other: Aggregator) -> None:
        raise ValueError("a central-DP round runs in one aggregator process (no split rounds)")

    def result(self) -> npt.NDArray[np.float32]:
        """The noised mean; drawn once (a second draw would release the sum twice)."""
        if self.count == 0:
            raise ValueError("no update was aggregated")
        if self._result is None:
            std = self.privacy.noise_multiplier * self.privacy.clip_norm
            noised = self._sum + self._rng.standard_normal(self.size) * std
            self._result = (noised / self.count).astype(np.float32)
        return self._result


def desk_rng() -> np.random.Generator:
    """The desk's noise generator, seeded from ``os.urandom``."""
    return np.random.default_rng(int.from_bytes(os.urandom(SEED_BYTES), "big"))


def lineage(previous: FederationSummary | None, privacy: CentralPrivacy | None) -> list[float]:
    """Noise multipliers of every federated round up to this one (0: no central noise).

    ``previous``: the base run's federation summary (None: a fitted run, no earlier round).
    A federated run written before the list existed counts as one round without noise."""
    prior: list[float] = []
    if previous is not None:
        prior = list(previous.dp_noise_multipliers) or [0.0]
    return [*prior, privacy.noise_multiplier if privacy is not None else 0.0]


def privacy_report(
    privacy: CentralPrivacy, multipliers: Sequence[float], clients: int
) -> PrivacyReport:
    """What a round with ``privacy`` guarantees over the lineage ``multipliers``."""
    got = epsilon(list(multipliers), privacy.delta)
    std = privacy.noise_multiplier * privacy.clip_norm
    return PrivacyReport(
        mechanism="clip each update to C, equal weights, Gaussian noise on the sum",
        clip_norm=privacy.clip_norm,
        noise_multiplier=privacy.noise_multiplier,
        noise_std_sum=std,
        noise_std_mean=std / clients if clients else std,
        clients=clients,
        adjacency=ADJACENCY,
        sampling=SAMPLING,
        lineage_rounds=len(multipliers),
        private_rounds=sum(1 for z in multipliers if z > 0),
        delta=privacy.delta,
        epsilon=None if got.order is None else got.epsilon,
        rdp_order=got.order,
    )
