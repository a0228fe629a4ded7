"""The signed round announcement: the desk asks the fleet for one round of local training.

Pipeline position: fleet learning (issue 11), the downlink half of a round. ``trainer federate
--broker`` signs a :class:`RoundAnnouncement` with :func:`sign_round` and publishes it retained
on ``<prefix>/fleet/round``; every gateway's learner (``edge_agent.learn.learner``) opens it
with :func:`open_round`, trains its active model's float weights on its own normal windows
and answers with a delta on ``<prefix>/<machine>/delta``.

The envelope is the OTA deployment's (``edge_agent.ota.protocol``): the 64-byte Ed25519
signature, then the canonical JSON it signs (sorted keys, no spaces). The key is the fleet's:
one of the keys that sign bundles, i.e. the agent's ``[model]`` trusted keys, so a round
cannot come from anyone who could not also ship a model. The signature is checked against
every trusted key before a byte of JSON is parsed. :func:`check_round` then says whether this
gateway should answer: not expired, for the model it runs (version and weights fingerprint).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field, ValidationError

from edge_agent.config.strict import StrictModel
from edge_agent.errors import EdgeAnomalyError
from edge_agent.learn.delta import MAX_ROUND_ID_CHARS, ROUND_ID_PATTERN
from edge_agent.learn.privacy_config import DevicePrivacy
from edge_agent.ota.protocol import SIGNATURE_BYTES, parse_time

ROUND_PROTOCOL: Literal[1] = 1
ROUND_SUFFIX = "fleet/round"  # <prefix>/fleet/round, retained
MAX_ROUND_BYTES = 16 * 1024  # an announcement holds settings, never data
SHA256_PATTERN = r"^[0-9a-f]{64}$"

RefusalReason = Literal["unsigned", "bad_signature", "malformed", "expired", "wrong_base"]


class RoundError(EdgeAnomalyError):
    """A round announcement this gateway will not act on; ``reason`` is a short code."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: RefusalReason = reason


class RoundAnnouncement(StrictModel):
    """One round of fleet learning: which base model, how to train, until when (signed)."""

    protocol: Literal[1] = Field(default=ROUND_PROTOCOL, description="Announcement format")
    round_id: str = Field(
        max_length=MAX_ROUND_ID_CHARS, pattern=ROUND_ID_PATTERN,
        description="The round's id; a gateway answers each id once",
    )
    base_model_version: str = Field(min_length=1, description="model_version of the base bundle")
    base_fingerprint: str = Field(
        pattern=SHA256_PATTERN, description="WeightSet.fingerprint() of its train weights"
    )
    epochs: int = Field(ge=1, le=1000, description="Local epochs over the gateway's windows")
    batch_size: int = Field(ge=1, le=65536, description="Windows per training step")
    learning_rate: float = Field(gt=0, le=1, description="Adam learning rate")
    prox_mu: float = Field(default=0.0, ge=0, description="FedProx proximal weight (0: off)")
    topk_fraction: float = Field(gt=0, le=1, description="Share of the delta's entries sent")
    min_windows: int = Field(ge=1, description="Fewest buffered normal windows to take part")
    seed: int = Field(default=0, ge=0, description="Shuffling seed of the local epochs")
    issued_at: str = Field(description="When the desk signed it (ISO 8601 UTC)")
    deadline: str = Field(description="Deltas after this time are not awaited (ISO 8601 UTC)")
    privacy: DevicePrivacy | None = Field(
        default=None, description="Local DP every answering gateway applies at least "
        "(edge_agent.learn.privacy); absent from the signed JSON when None, as before it existed"
    )


def round_topic(prefix: str) -> str:
    return f"{prefix}/{ROUND_SUFFIX}"


def iso_utc(t: float) -> str:
    """Epoch seconds as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical(announcement: RoundAnnouncement) -> bytes:
    return json.dumps(
        announcement.model_dump(mode="json", exclude_none=True), sort_keys=True,
        separators=(",", ":"),
    ).encode("ascii")


def sign_round(announcement: RoundAnnouncement, key: Ed25519PrivateKey) -> bytes:
    """The retained payload: the signature, then the canonical JSON it signs."""
    body = canonical(announcement)
    return key.sign(body) + body


def open_round(payload: bytes, trusted: Sequence[Ed25519PublicKey]) -> RoundAnnouncement:
    """Check the signature against any trusted key, then parse (nothing is parsed before)."""
    if len(payload) > MAX_ROUND_BYTES:
        raise RoundError(
            "malformed", f"{len(payload)} bytes is over the {MAX_ROUND_BYTES}-byte limit"
        )
    if len(payload) <= SIGNATURE_BYTES:
        raise RoundError("unsigned", "too short to hold a signature")
    sig, body = payload[:SIGNATURE_BYTES], payload[SIGNATURE_BYTES:]
    for key in trusted:
        try:
            key.verify(sig, body)
            break
        except InvalidSignature:
            continue
    else:
        raise RoundError(
            "bad_signature", "signature matches no trusted fleet key: modified, or signed by "
            "an untrusted key"
        )
    try:
        announcement = RoundAnnouncement.model_validate_json(body)
        deadline, issued = parse_time(announcement.deadline), parse_time(announcement.issued_at)
    except (ValidationError, ValueError) as exc:
        raise RoundError("malformed", f"signed, but not understood:\n{exc}") from None
    if deadline < issued:
        raise RoundError("malformed", f"deadline {announcement.deadline} is before issued_at")
    return announcement


def check_round(
    announcement: RoundAnnouncement, *, now: float, model_version: str, fingerprint: str
) -> None:
    """RoundError unless this gateway, running ``model_version`` with train weights of
    ``fingerprint``, should answer ``announcement`` at ``now`` (epoch s)."""
    if parse_time(announcement.deadline) <= now:
        raise RoundError(
            "expired", f"round {announcement.round_id} closed at {announcement.deadline}"
        )
    if announcement.base_model_version != model_version:
        raise RoundError(
            "wrong_base", f"round {announcement.round_id} trains model "
            f"{announcement.base_model_version}; this gateway runs {model_version}"
        )
    if announcement.base_fingerprint != fingerprint:
        raise RoundError(
            "wrong_base", f"round {announcement.round_id} names weights "
            f"{announcement.base_fingerprint[:12]}…, the running model's are {fingerprint[:12]}…"
        )
