"""``[learn.privacy]`` and the privacy a round announcement requires: local DP settings.

Pipeline position: fleet learning (issue 11), configuration only. ``LearnConfig.privacy``
(``edge_agent.learn.config``) is the gateway's own choice, off by default;
``RoundAnnouncement.privacy`` (``edge_agent.learn.rounds``) is what the desk asks of every
gateway that answers a round. ``edge_agent.learn.privacy`` applies the stricter of the two to
the local update before error feedback and top-k. Like the rest of the config, this module
imports nothing heavier than pydantic (``validate`` stays fast). There is deliberately no seed:
a gateway's noise comes from ``os.urandom``, since noise anyone can regenerate protects nothing.
"""

from __future__ import annotations

from pydantic import Field

from edge_agent.config.strict import StrictModel

# L2, weight units: below the median first-round update of the default dense autoencoder
# (2 local epochs, Adam 1e-3, 5,000 windows: 0.53-1.01, median 0.82 on the simulated fleet of
# bench/fleet_privacy.py), so it binds for most gateways.
DEFAULT_CLIP_NORM = 0.5
DEFAULT_NOISE_MULTIPLIER = 1.0  # noise std / clip bound; per-round RDP of 2*alpha (replace-one)


class DevicePrivacy(StrictModel):
    """Clip the local update to an L2 bound and add Gaussian noise before it is compressed."""

    clip_norm: float = Field(
        gt=0, description="L2 bound the local update (local - global weights) is scaled down to"
    )
    noise_multiplier: float = Field(
        ge=0, description="Gaussian noise per coordinate has std noise_multiplier x clip_norm "
        "(0: clipping only, no privacy guarantee)"
    )


class LocalPrivacyConfig(StrictModel):
    """``[learn.privacy]``: local differential privacy of this gateway's deltas (off)."""

    enabled: bool = Field(
        default=False, description="Clip every local update and add Gaussian noise before error "
        "feedback and top-k (a round announcement can also require it)"
    )
    clip_norm: float = Field(
        default=DEFAULT_CLIP_NORM, gt=0, description="L2 bound of the local update, in weight "
        "units (the update is local minus global weights, before the residual is added)"
    )
    noise_multiplier: float = Field(
        default=DEFAULT_NOISE_MULTIPLIER, ge=0, description="Noise std per coordinate over "
        "clip_norm; each round is then (alpha, 2 alpha / noise_multiplier^2)-RDP for this "
        "gateway's whole buffer (docs/fleet-learning.md, Privacy)"
    )

    def required(self) -> DevicePrivacy | None:
        """The settings this gateway applies by itself (None when off)."""
        if not self.enabled:
            return None
        return DevicePrivacy(clip_norm=self.clip_norm, noise_multiplier=self.noise_multiplier)
