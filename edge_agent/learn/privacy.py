"""Local differential privacy of a gateway's update: clip, then Gaussian noise, then compress.

Pipeline position: fleet learning (issue 11), inside a local round
(``edge_agent.learn.train_round.run_round``), between local training and error feedback:

    update = local − global  →  clip to L2 ≤ C  →  + N(0, (z·C)²) per coordinate
           →  + residual, top-k, int8 (``edge_agent.learn.residual``)  →  signed delta

Why the noise goes first. Everything after it (adding the residual, choosing the top-k
positions, int8 codes and scales, the norm in the header) is then a function of noised
updates only, so it is post-processing and costs no privacy. The residual is the noised
update's unsent part: it never holds a raw (un-noised) value, so carrying it into later rounds
cannot leak the data that produced it. Noise added after sparsifying would not do: the top-k
*positions* would be chosen on raw values, and the residual would carry raw values forward.
Error feedback does not amplify the noise either: it only delays it, and over the rounds the
desk receives exactly the sum of the noised updates minus the last residual.

The guarantee given, per gateway. Neighbouring inputs are any two buffers of that gateway (its
whole local data, "replace one"), with the same global weights and announcement: the clipped
updates differ by at most 2C in L2, so one round is the Gaussian mechanism with sensitivity 2C
and std z·C, i.e. (α, 2α/z²)-RDP, and T rounds answered compose to 2Tα/z²
(:func:`local_epsilon`; ``edge_agent.learn.accountant``). Not covered: the header's metadata
(sample count, epochs run), message timing and size, and whether the gateway answered at all.
The noise comes from numpy's PCG64 seeded with 256 bits of ``os.urandom``, never a fixed seed;
it is a floating-point sampler, not a hardened one (the known floating-point attacks on DP
samplers apply in principle).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from edge_agent.learn.accountant import Guarantee, epsilon
from edge_agent.learn.privacy_config import DevicePrivacy

SEED_BYTES = 32  # entropy drawn from os.urandom for each round's noise generator
REPLACE_ONE_SENSITIVITY = 2.0  # two clipped updates differ by at most 2C


@dataclass(frozen=True)
class Privatized:
    """One noised update and what was done to it."""

    vector: np.ndarray  # float32: clipped update + noise
    norm: float  # L2 norm of the update before clipping
    scale: float  # clipping factor applied (1: untouched)
    noise_std: float  # per-coordinate standard deviation of the noise added


def effective(own: DevicePrivacy | None, required: DevicePrivacy | None) -> DevicePrivacy | None:
    """The stricter of this gateway's settings and a round's requirement: the smaller clip
    bound and the larger noise multiplier (None when neither asks for privacy)."""
    if own is None or required is None:
        return own if required is None else required
    return DevicePrivacy(
        clip_norm=min(own.clip_norm, required.clip_norm),
        noise_multiplier=max(own.noise_multiplier, required.noise_multiplier),
    )


def device_rng() -> np.random.Generator:
    """A noise generator seeded from ``os.urandom`` (a fresh one per round)."""
    return np.random.default_rng(int.from_bytes(os.urandom(SEED_BYTES), "big"))


def privatize(
    update: np.ndarray, settings: DevicePrivacy, rng: np.random.Generator
) -> Privatized:
    """Clip ``update`` (flat float32) to ``settings.clip_norm`` and add the Gaussian noise."""
    v = np.asarray(update, dtype=np.float32)
    if v.ndim != 1 or not np.isfinite(v).all():
        raise ValueError(f"update to privatize must be a finite 1-D vector, got shape {v.shape}")
    wide = v.astype(np.float64)
    norm = float(np.sqrt(np.dot(wide, wide)))
    scale = 1.0 if norm <= settings.clip_norm else settings.clip_norm / norm
    std = settings.noise_multiplier * settings.clip_norm
    noised = wide * scale + rng.standard_normal(v.size) * std
    return Privatized(noised.astype(np.float32), norm, scale, std)


def local_epsilon(noise_multiplier: float, rounds: int, delta: float) -> Guarantee:
    """(ε, δ) for one gateway's whole buffer after ``rounds`` noised rounds (replace-one)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    return epsilon([noise_multiplier] * rounds, delta, sensitivity=REPLACE_ONE_SENSITIVITY)
