"""``NEW_RUN/federate.json``: what one round did, client by client.

Written by ``run_out`` at the end of ``trainer federate``; read by engineers and by the bench.
Every delta offered to the round appears once, accepted or refused with the reason code of
``edge_agent.learn.delta.DeltaError`` (or the aggregator's own), with the bytes received; the
round's settings, the clipping bound, the server optimizer's state note and the norms of the
aggregate and of the step applied follow.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field

from edge_agent.config.strict import StrictModel
from trainer.federate.privacy import PrivacyReport
from trainer.federate.settings import FederateSettings

REPORT_FILE = "federate.json"


class ClientResult(StrictModel):
    """One delta offered to the round."""

    source: str = Field(description="Where the delta came from: a file path or an MQTT topic")
    machine: str | None = Field(description="Gateway id (from the envelope; None if unreadable)")
    bytes: int = Field(ge=0, description="Size of the delta message as received, in bytes")
    status: Literal["accepted", "refused"] = Field(description="Whether it was aggregated")
    reason: str | None = Field(
        default=None, description="Refusal code (bad_signature, wrong_base, ...); None if accepted"
    )
    message: str | None = Field(default=None, description="Refusal explained; None if accepted")
    samples: int | None = Field(default=None, ge=0, description="Local windows trained on")
    norm: float | None = Field(default=None, ge=0, description="L2 norm of the decoded delta")
    clip_scale: float | None = Field(
        default=None, ge=0, le=1, description="Factor the clipping applied (1: untouched)"
    )


class FederateReport(StrictModel):
    """The whole round."""

    round_id: str = Field(description="The round's id")
    base_run: str = Field(description="Base run directory, as given")
    base_fingerprint: str = Field(description="Weights fingerprint of the base run's model")
    weights_fingerprint: str = Field(description="Weights fingerprint of the new run's model")
    parameters: int = Field(ge=1, description="Float parameters of the trainable model")
    settings: FederateSettings = Field(description="Settings the round ran with")
    clip_mode: str = Field(description="fixed, median_multiple or off")
    clip_bounds: list[float] = Field(
        description="L2 bound updates were clipped to, one per aggregator process (empty: off)"
    )
    server_state: str = Field(description="Whether the optimizer state continued, and from where")
    clients: list[ClientResult] = Field(description="Every delta offered, in the order read")
    accepted: int = Field(ge=0, description="Deltas aggregated")
    refused: int = Field(ge=0, description="Deltas refused")
    samples: int = Field(ge=0, description="Local windows summed over accepted deltas")
    bytes_received: int = Field(ge=0, description="Bytes of every delta offered, summed")
    aggregate_norm: float = Field(ge=0, description="L2 norm of the aggregated delta")
    step_norm: float = Field(ge=0, description="L2 norm of the change applied to the weights")
    alert_threshold_base: float = Field(description="Base run's float alert threshold")
    alert_threshold: float = Field(description="New run's float alert threshold (recalibrated)")
    seconds: float = Field(ge=0, description="Wall time of the round at the desk, in seconds")
    privacy: PrivacyReport | None = Field(
        default=None, description="Central DP: the noise added and the (epsilon, delta) of the "
        "run's lineage (trainer.federate.privacy); null when off"
    )

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"
