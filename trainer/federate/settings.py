"""Settings of one aggregation round: the robust rule, norm clipping and the server optimizer.

Read by every stage of ``trainer federate`` (``aggregate`` and ``robust`` for the rule and the
clip, ``server_opt`` for the step, ``collect`` for the acceptance bounds) and written verbatim
into ``NEW_RUN/federate.json`` so a round can be repeated exactly. The CLI builds it from its
options; the model validates them (one message per bad option).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edge_agent.config.strict import StrictModel
from edge_agent.learn.delta import DEFAULT_MAX_BYTES, MAX_ROUND_ID_CHARS, ROUND_ID_PATTERN
from trainer.federate.privacy import CentralPrivacy

# Clip each update to this multiple of the median update norm when no fixed bound is given:
# honest clients' norms spread over a factor of a few (different sample counts and drift), so
# 3x the median leaves them untouched while a scaled or random update loses its weight.
DEFAULT_CLIP_MULTIPLE = 3.0
# FedAvgM: Hsu et al. 2019 use server momentum 0.9 with server learning rate 1.
DEFAULT_MOMENTUM = 0.9
# FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization"): beta1 0.9, beta2 0.99 and
# an adaptivity tau of 1e-3; their best server learning rates sit around 1e-2.
DEFAULT_BETA1 = 0.9
DEFAULT_BETA2 = 0.99
DEFAULT_TAU = 1e-3
DEFAULT_ADAM_LR = 1e-2
# A delta whose L2 norm exceeds this is refused outright (faulty device): normalized-window
# autoencoders move their weights by far less than this in a few local epochs.
DEFAULT_MAX_NORM = 1e3

# --broker mode: the aggregators' MQTT v5 shared-subscription group, and how long a round
# stays open for the fleet's deltas (a local round takes ~10 s of CPU on a Pi 4, plus the
# wait for the gateways that are busy or offline).
DEFAULT_GROUP = "federate"
DEFAULT_ROUND_TIMEOUT_S = 600.0

Rule = Literal["fedavg", "trimmed_mean", "median"]
ServerOpt = Literal["none", "avgm", "adam"]


class FederateSettings(StrictModel):
    """How one round's accepted deltas become the next global weights."""

    round_id: str = Field(
        min_length=1,
        max_length=MAX_ROUND_ID_CHARS,
        pattern=ROUND_ID_PATTERN,
        description="Round id every accepted delta must carry (the delta header's round_id)",
    )
    rule: Rule = Field(
        default="fedavg",
        description="fedavg: sample-weighted mean (streaming); trimmed_mean / median: "
        "coordinate-wise, unweighted, keeping every update in memory (O(K x P) floats)",
    )
    trim_fraction: float = Field(
        default=0.1,
        ge=0.0,
        lt=0.5,
        description="trimmed_mean: share of updates dropped at each end of every coordinate",
    )
    clip_norm: float | None = Field(
        default=None,
        gt=0,
        description="Fixed L2 bound each update is scaled down to; None: use clip_multiple",
    )
    clip_multiple: float | None = Field(
        default=DEFAULT_CLIP_MULTIPLE,
        gt=0,
        description="Without clip_norm: bound = this multiple of the median L2 norm of the "
        "round's accepted updates; None (and no clip_norm) turns clipping off",
    )
    server_opt: ServerOpt = Field(
        default="none",
        description="none: add lr x mean delta; avgm: server momentum (FedAvgM); adam: FedAdam",
    )
    server_lr: float | None = Field(
        default=None,
        gt=0,
        description="Server learning rate; default 1 for none/avgm and 1e-2 for adam",
    )
    momentum: float = Field(
        default=DEFAULT_MOMENTUM, ge=0, lt=1, description="avgm: server momentum beta"
    )
    beta1: float = Field(default=DEFAULT_BETA1, ge=0, lt=1, description="adam: first moment decay")
    beta2: float = Field(default=DEFAULT_BETA2, ge=0, lt=1, description="adam: second moment decay")
    tau: float = Field(
        default=DEFAULT_TAU, gt=0, description="adam: adaptivity floor added to sqrt(v)"
    )
    min_clients: int = Field(
        default=1, ge=1, description="Accepted deltas needed, else the round fails (no new run)"
    )
    max_norm: float = Field(
        default=DEFAULT_MAX_NORM,
        gt=0,
        description="A delta whose L2 norm (of its decoded values) is above this is refused",
    )
    max_delta_bytes: int = Field(
        default=DEFAULT_MAX_BYTES,
        ge=64,
        description="A delta message longer than this many bytes is refused (too_large)",
    )
    privacy: CentralPrivacy | None = Field(
        default=None,
        description="Central DP (trainer.federate.privacy): equal weights, clip to its fixed "
        "clip_norm, Gaussian noise on the sum; None: off",
    )

    @model_validator(mode="after")
    def _trim_only_for_trimmed_mean(self) -> FederateSettings:
        if (
            self.rule != "trimmed_mean"
            and self.trim_fraction != FederateSettings.model_fields["trim_fraction"].default
        ):
            raise ValueError(f"trim_fraction applies to rule trimmed_mean only (rule {self.rule})")
        return self

    @model_validator(mode="after")
    def _privacy_needs_a_fixed_clip(self) -> FederateSettings:
        # A bound taken from the round's own norms (median multiple) lets one gateway move
        # every other's clip, and the robust rules are not a Gaussian sum: no guarantee.
        if self.privacy is not None and (
            self.rule != "fedavg" or self.clip_norm != self.privacy.clip_norm
        ):
            raise ValueError(
                f"central DP needs rule fedavg and clip_norm = its clip_norm "
                f"({self.privacy.clip_norm:g}); got rule {self.rule}, clip_norm {self.clip_norm}"
            )
        return self

    @property
    def effective_server_lr(self) -> float:
        """The server learning rate after defaults: 1e-2 for adam, 1 otherwise."""
        if self.server_lr is not None:
            return self.server_lr
        return DEFAULT_ADAM_LR if self.server_opt == "adam" else 1.0
