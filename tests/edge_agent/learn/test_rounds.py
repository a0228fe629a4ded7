"""The signed round announcement: signature checked before parsing, expiry, base model."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.learn.rounds import (
    MAX_ROUND_BYTES,
    SIGNATURE_BYTES,
    RoundAnnouncement,
    RoundError,
    check_round,
    iso_utc,
    open_round,
    round_topic,
    sign_round,
)

FINGERPRINT = "ab" * 32
HOUR_S = 3600.0


def announcement(**changes: object) -> RoundAnnouncement:
    now = time.time()
    fields: dict[str, object] = {
        "round_id": "r-1", "base_model_version": "m-1", "base_fingerprint": FINGERPRINT,
        "epochs": 2, "batch_size": 32, "learning_rate": 1e-3, "prox_mu": 0.0,
        "topk_fraction": 0.01, "min_windows": 10, "issued_at": iso_utc(now),
        "deadline": iso_utc(now + HOUR_S),
    }
    fields.update(changes)
    return RoundAnnouncement.model_validate(fields)


@pytest.fixture(scope="module")
def fleet_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_round_trip_with_any_trusted_key(fleet_key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    a = announcement(prox_mu=0.1, seed=7)
    payload = sign_round(a, fleet_key)
    assert open_round(payload, [other.public_key(), fleet_key.public_key()]) == a
    assert sign_round(a, fleet_key) == payload  # canonical JSON, deterministic signature
    assert round_topic("edge") == "edge/fleet/round"


@pytest.mark.parametrize("where", [0, SIGNATURE_BYTES - 1, SIGNATURE_BYTES, -1])
def test_any_changed_byte_is_refused(fleet_key: Ed25519PrivateKey, where: int) -> None:
    payload = bytearray(sign_round(announcement(), fleet_key))
    payload[where] ^= 0x01
    with pytest.raises(RoundError) as err:
        open_round(bytes(payload), [fleet_key.public_key()])
    assert err.value.reason == "bad_signature"


def test_wrong_key_unsigned_and_oversized_are_refused(fleet_key: Ed25519PrivateKey) -> None:
    payload = sign_round(announcement(), Ed25519PrivateKey.generate())
    with pytest.raises(RoundError, match="no trusted fleet key"):
        open_round(payload, [fleet_key.public_key()])
    with pytest.raises(RoundError) as err:
        open_round(b"{}", [fleet_key.public_key()])
    assert err.value.reason == "unsigned"
    with pytest.raises(RoundError, match="limit"):
        open_round(b"x" * (MAX_ROUND_BYTES + 1), [fleet_key.public_key()])


def test_signed_nonsense_is_malformed_not_a_crash(fleet_key: Ed25519PrivateKey) -> None:
    body = b'{"round_id": "r-1"}'
    with pytest.raises(RoundError) as err:
        open_round(fleet_key.sign(body) + body, [fleet_key.public_key()])
    assert err.value.reason == "malformed"
    late = announcement(deadline="2020-01-01T00:00:00Z")
    with pytest.raises(RoundError, match="before issued_at"):
        open_round(sign_round(late, fleet_key), [fleet_key.public_key()])


def test_expired_round_is_refused() -> None:
    a = announcement(issued_at="2020-01-01T00:00:00Z", deadline="2020-01-02T00:00:00Z")
    with pytest.raises(RoundError) as err:
        check_round(a, now=time.time(), model_version="m-1", fingerprint=FINGERPRINT)
    assert err.value.reason == "expired"


def test_round_for_another_base_is_refused() -> None:
    a = announcement()
    check_round(a, now=time.time(), model_version="m-1", fingerprint=FINGERPRINT)
    with pytest.raises(RoundError, match="runs m-2") as err:
        check_round(a, now=time.time(), model_version="m-2", fingerprint=FINGERPRINT)
    assert err.value.reason == "wrong_base"
    with pytest.raises(RoundError, match="weights") as err:
        check_round(a, now=time.time(), model_version="m-1", fingerprint="cd" * 32)
    assert err.value.reason == "wrong_base"


def test_bad_settings_are_refused_when_made() -> None:
    with pytest.raises(ValueError, match="round_id"):
        announcement(round_id="has space")
    with pytest.raises(ValueError, match="topk_fraction"):
        announcement(topk_fraction=0.0)
