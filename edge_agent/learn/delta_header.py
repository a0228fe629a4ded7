"""The signed header of a model delta: who sent it, against which base, how the body is laid out.

Pipeline position: fleet learning (issue 11), part of the delta wire format
(``edge_agent.learn.delta``, which frames, signs and checks it; see ``docs/fleet-learning.md``).
The header travels as canonical JSON (sorted keys, no spaces, ASCII) between the envelope's
fixed framing and the compressed body, covered by the gateway's signature; nothing in it is
read before that signature checks out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Literal

from pydantic import Field, model_validator

from edge_agent.config.strict import StrictModel
from edge_agent.learn.weights import WeightSet

FORMAT_VERSION: Literal[1] = 1
MAX_MACHINE_ID_BYTES = 64  # as AgentConfig.machine_id
MACHINE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # topic-safe, as AgentConfig.machine_id
ROUND_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
MAX_ROUND_ID_CHARS = 64
SHA256_HEX = r"^[0-9a-f]{64}$"
UTC_STAMP = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"


class DeltaHeader(StrictModel):
    """Who sent the delta, against which base, and how the body is laid out (signed JSON)."""

    format: Literal[1] = Field(description="Delta format version (the envelope's version byte)")
    machine_id: str = Field(
        max_length=MAX_MACHINE_ID_BYTES, pattern=MACHINE_ID_PATTERN,
        description="The gateway that trained and signed it",
    )
    model_version: str = Field(min_length=1, description="Base bundle's model_version")
    base_fingerprint: str = Field(
        pattern=SHA256_HEX, description="WeightSet.fingerprint() of the base weights"
    )
    round_id: str = Field(
        max_length=MAX_ROUND_ID_CHARS, pattern=ROUND_ID_PATTERN,
        description="The aggregation round this delta answers",
    )
    samples: int = Field(ge=1, description="Local windows trained on (the FedAvg weight)")
    epochs: int = Field(ge=1, description="Local epochs run")
    norm: float = Field(ge=0, allow_inf_nan=False, description="L2 norm of the sent values")
    size: int = Field(ge=1, description="Dense parameter count")
    k: int = Field(ge=1, description="Entries sent (top-k)")
    tensor_sizes: tuple[int, ...] = Field(
        min_length=1, description="Parameters per tensor, WeightSet order (one scale each)"
    )
    layout_sha256: str = Field(
        pattern=SHA256_HEX, description="SHA-256 of the tensor names and shapes"
    )
    created_at: str = Field(
        pattern=UTC_STAMP,
        description="When the gateway made it (ISO 8601 UTC, Z)",
    )

    @model_validator(mode="after")
    def _counts_agree(self) -> DeltaHeader:
        if min(self.tensor_sizes) < 1 or sum(self.tensor_sizes) != self.size:
            raise ValueError(f"tensor_sizes {self.tensor_sizes} do not sum to size {self.size}")
        if self.k > self.size:
            raise ValueError(f"k {self.k} is larger than size {self.size}")
        return self


def layout_sha256(weights: WeightSet) -> str:
    """SHA-256 (hex) of the tensor names and shapes, in order."""
    digest = hashlib.sha256()
    for name, shape in zip(weights.names, weights.shapes, strict=True):
        digest.update(name.encode("utf-8") + b"\0" + ",".join(map(str, shape)).encode() + b"\0")
    return digest.hexdigest()


def canonical_json(header: DeltaHeader) -> bytes:
    return json.dumps(
        header.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
    ).encode("ascii")


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
