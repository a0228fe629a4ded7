"""``[ota]``: whether and how this gateway takes model updates over the air.

Read by :class:`edge_agent.ota.updater.Updater` (limits, canary and probation bounds) and by
the agent at start (which model to load). Deployments arrive over the broker of ``[mqtt]``
under its ``topic_prefix``, signed with the same keys the bundle must be signed with
(``[model] trusted_keys``), so this section holds no address and no key of its own.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from edge_agent.config.strict import StrictModel
from edge_agent.ota.protocol import NAME_PATTERN

DEFAULT_MAX_BUNDLE_MB = 64.0
DEFAULT_CANARY_S = 300.0
DEFAULT_CANARY_RATIO = 5.0
DEFAULT_CANARY_FLOOR = 0.05
DEFAULT_CANARY_LATENCY_MS = 50.0
DEFAULT_PROBATION_S = 600.0
DEFAULT_PROBATION_ALERT_SHARE = 0.5
DEFAULT_PROBATION_ERRORS = 10
DEFAULT_MAX_BOOTS = 3


class OtaConfig(StrictModel):
    """Over-the-air model updates (needs ``[mqtt]``: deployments come over the same broker)."""

    enabled: bool = Field(
        default=False, description="Take signed deployments from the broker; without a model "
        "configured the agent then starts and waits for its first one"
    )
    groups: list[str] = Field(
        default_factory=list, description="Groups this machine belongs to (deployments to "
        "`--group NAME` reach it); topic-safe names"
    )
    max_bundle_mb: float = Field(
        default=DEFAULT_MAX_BUNDLE_MB, gt=0, description="Largest bundle accepted, in MiB "
        "(all its files together); a larger one is rejected before any download"
    )
    canary_s: float = Field(
        default=DEFAULT_CANARY_S, ge=0, description="Seconds of recent live rows the candidate "
        "scores next to the running model before the switch; 0: only check that it loads "
        "and runs"
    )
    canary_max_alert_ratio: float = Field(
        default=DEFAULT_CANARY_RATIO, gt=0, description="The candidate's share of alerting "
        "windows on those rows may be at most this many times the running model's"
    )
    canary_alert_floor: float = Field(
        default=DEFAULT_CANARY_FLOOR, ge=0, le=1, description="Share of alerting windows "
        "always tolerated at canary (0..1), whatever the running model's share"
    )
    canary_latency_ms: float = Field(
        default=DEFAULT_CANARY_LATENCY_MS, gt=0, description="Budget of the candidate's p99 "
        "CPU time (the scoring thread's, not wall time) to score one window at canary, in ms"
    )
    probation_s: float = Field(
        default=DEFAULT_PROBATION_S, ge=0, description="Seconds of running time a new model "
        "is watched before it is marked good; a breach of a bound rolls it back"
    )
    probation_max_alert_share: float = Field(
        default=DEFAULT_PROBATION_ALERT_SHARE, gt=0, le=1, description="Share of alerting "
        "windows (0..1) above which a model on probation is rolled back"
    )
    probation_max_errors: int = Field(
        default=DEFAULT_PROBATION_ERRORS, ge=0, description="Scoring errors plus skipped "
        "windows above which a model on probation is rolled back"
    )
    max_boots: int = Field(
        default=DEFAULT_MAX_BOOTS, ge=1, description="Agent starts allowed while a model is "
        "on probation; one more (a crash loop) rolls it back before it is loaded"
    )

    @field_validator("groups")
    @classmethod
    def _topic_safe(cls, groups: list[str]) -> list[str]:
        bad = [g for g in groups if not re.match(NAME_PATTERN, g)]
        if bad:
            raise ValueError(f"group names {bad} are not topic-safe ({NAME_PATTERN})")
        if len(set(groups)) != len(groups):
            raise ValueError(f"groups listed twice: {groups}")
        return groups
