"""Local differential privacy of a gateway's update (``edge_agent.learn.privacy``): clipping
bounds the norm, the noise has the stated std, the stricter of the gateway's and the round's
settings applies, the noise goes in before error feedback (the residual only ever holds noised
values), and with privacy off (the default) the delta is byte for byte today's.

Uses the session's real signed dense bundle and windows of another simulated compressor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from learn_support import announcement

from edge_agent.bundle.manifest import Manifest
from edge_agent.bundle.verify import verify_bundle
from edge_agent.config.load import ConfigErrors, load_config
from edge_agent.learn.accountant import epsilon
from edge_agent.learn.bundle_weights import load_train_weights
from edge_agent.learn.config import LearnConfig
from edge_agent.learn.delta import decode_delta, encode_delta
from edge_agent.learn.history import history_windows
from edge_agent.learn.local import train_local
from edge_agent.learn.privacy import effective, local_epsilon, privatize
from edge_agent.learn.privacy_config import DevicePrivacy, LocalPrivacyConfig
from edge_agent.learn.residual import error_feedback
from edge_agent.learn.rounds import RoundAnnouncement, canonical
from edge_agent.learn.train_round import Budget, run_round, training_config
from edge_agent.learn.weights import WeightSet
from edge_agent.simulator import MachineProfile, simulate_plant

TEST_SEED = 20260101  # tests only: a gateway never seeds its noise
NOISE_COORDS = 200_000  # enough draws for the sample std to sit within 1 % of the truth
STD_REL_TOLERANCE = 0.02  # ~4.5 standard errors of the sample std at 200k draws: not flaky
MACHINE = "press-7"
CREATED_AT = "2026-01-01T00:00:00Z"
BUDGET = Budget(max_cpu_s=600.0, max_windows=600)
OTHER_MACHINE = MachineProfile(ambient_offset_c=8.0, vibration_offset_mms=1.0, noise_scale=1.3)


@pytest.fixture(scope="module")
def model(bundle: Path, keys: Path) -> tuple[Manifest, WeightSet]:
    verified = verify_bundle(bundle, keys / "signing.pub")
    weights = load_train_weights(verified.path, verified.manifest)
    assert weights is not None
    return verified.manifest, weights


@pytest.fixture(scope="module")
def windows(model: tuple[Manifest, WeightSet]) -> np.ndarray:
    plant = simulate_plant(rows=1_500, seed=11, anomaly_fraction=0.0, profile=OTHER_MACHINE)
    from edge_agent.data.table import SensorTable

    table = SensorTable("local", plant.timestamps, plant.values, plant.channels)
    return history_windows(table, model[0], hop=2)[0]


@pytest.fixture(scope="module")
def device_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def test_clipping_bounds_the_norm_and_leaves_small_updates_alone() -> None:
    rng = np.random.default_rng(TEST_SEED)
    big = rng.standard_normal(5_000).astype(np.float32) * 3
    clip_only = DevicePrivacy(clip_norm=0.5, noise_multiplier=0.0)
    out = privatize(big, clip_only, rng)
    assert out.norm == pytest.approx(float(np.linalg.norm(big.astype(np.float64))))
    assert float(np.linalg.norm(out.vector.astype(np.float64))) == pytest.approx(0.5, rel=1e-5)
    assert out.scale == pytest.approx(0.5 / out.norm)
    np.testing.assert_allclose(out.vector, big * out.scale, rtol=1e-6)  # direction kept
    small = (big / np.float32(100 * out.norm)).astype(np.float32)  # norm 0.01 < 0.5
    kept = privatize(small, clip_only, rng)
    assert kept.scale == 1.0
    np.testing.assert_array_equal(kept.vector, small)


def test_noise_std_is_the_multiplier_times_the_clip_bound() -> None:
    settings = DevicePrivacy(clip_norm=0.2, noise_multiplier=1.5)
    out = privatize(np.zeros(NOISE_COORDS, np.float32), settings, np.random.default_rng(TEST_SEED))
    assert out.noise_std == pytest.approx(0.3)
    noise = out.vector.astype(np.float64)
    assert noise.std() == pytest.approx(0.3, rel=STD_REL_TOLERANCE)
    assert abs(noise.mean()) < 5 * 0.3 / np.sqrt(NOISE_COORDS)
    # A fresh generator each round: different noise, never a fixed seed on the device.
    again = privatize(np.zeros(8, np.float32), settings, np.random.default_rng(TEST_SEED + 1))
    assert not np.array_equal(again.vector, out.vector[:8])


def test_bad_updates_are_named() -> None:
    settings = DevicePrivacy(clip_norm=1.0, noise_multiplier=1.0)
    rng = np.random.default_rng(TEST_SEED)
    with pytest.raises(ValueError, match="finite 1-D"):
        privatize(np.array([1.0, np.nan], np.float32), settings, rng)
    with pytest.raises(ValueError, match="finite 1-D"):
        privatize(np.zeros((2, 2), np.float32), settings, rng)


def test_the_stricter_of_gateway_and_round_applies() -> None:
    own = DevicePrivacy(clip_norm=0.1, noise_multiplier=0.8)
    asked = DevicePrivacy(clip_norm=0.3, noise_multiplier=1.2)
    assert effective(None, None) is None
    assert effective(own, None) == own
    assert effective(None, asked) == asked
    assert effective(own, asked) == DevicePrivacy(clip_norm=0.1, noise_multiplier=1.2)
    assert LocalPrivacyConfig().required() is None  # off by default
    on = LocalPrivacyConfig(enabled=True, clip_norm=0.2, noise_multiplier=2.0)
    assert on.required() == DevicePrivacy(clip_norm=0.2, noise_multiplier=2.0)


def test_local_epsilon_is_the_gaussian_of_twice_the_sensitivity() -> None:
    # Replace-one neighbours: sensitivity 2C, i.e. the add/remove accounting at half the noise.
    for z, rounds in ((1.0, 1), (4.0, 10)):
        got = local_epsilon(z, rounds, 1e-5)
        assert got.epsilon == pytest.approx(epsilon([z / 2] * rounds, 1e-5).epsilon)
        assert got.rounds == rounds
    assert local_epsilon(8.0, 5, 1e-5).epsilon < local_epsilon(4.0, 5, 1e-5).epsilon
    with pytest.raises(ValueError, match="rounds"):
        local_epsilon(1.0, 0, 1e-5)


def _today(manifest: Manifest, weights: WeightSet, windows: np.ndarray, a: RoundAnnouncement,
           key: Ed25519PrivateKey) -> bytes:
    """The delta as run_round made it before privacy existed: train, error feedback, encode."""
    assert manifest.learning is not None
    local = train_local(weights, windows, training_config(a, BUDGET), manifest.learning.layers)
    update = local.weights.subtract(weights).flat()
    step = error_feedback(update, None, tuple(int(x.size) for x in weights.arrays),
                          a.topk_fraction)
    return encode_delta(step.sparse, base=weights, machine_id=MACHINE,
                        model_version=manifest.model_version, round_id=a.round_id,
                        samples=local.samples, epochs=max(1, local.epochs_run), key=key,
                        created_at=CREATED_AT)


def test_off_by_default_the_delta_is_byte_for_byte_todays(
    bundle: Path, keys: Path, model: tuple[Manifest, WeightSet], windows: np.ndarray,
    device_key: Ed25519PrivateKey,
) -> None:
    manifest, weights = model
    a = announcement(bundle, keys)
    out = run_round(manifest, weights, windows, a, BUDGET, machine_id=MACHINE, key=device_key,
                    residual=None, created_at=CREATED_AT,
                    privacy=LearnConfig().privacy.required())
    assert out.privacy is None
    assert out.payload == _today(manifest, weights, windows, a, device_key)
    # The announcement without privacy signs the same JSON as before the field existed, so
    # gateways that predate it (strict parsers) still open it.
    assert b"privacy" not in canonical(a)


def test_noise_goes_in_before_error_feedback(
    bundle: Path, keys: Path, model: tuple[Manifest, WeightSet], windows: np.ndarray,
    device_key: Ed25519PrivateKey,
) -> None:
    manifest, weights = model
    asked = DevicePrivacy(clip_norm=0.01, noise_multiplier=0.5)
    a = announcement(bundle, keys, privacy=asked.model_dump())
    assert b'"privacy":{"clip_norm":0.01,"noise_multiplier":0.5}' in canonical(a)
    own = DevicePrivacy(clip_norm=0.02, noise_multiplier=1.0)
    out = run_round(manifest, weights, windows, a, BUDGET, machine_id=MACHINE, key=device_key,
                    residual=None, created_at=CREATED_AT, privacy=own,
                    rng=np.random.default_rng(TEST_SEED))
    applied = DevicePrivacy(clip_norm=0.01, noise_multiplier=1.0)
    assert out.privacy == applied
    assert out.payload != _today(manifest, weights, windows, a, device_key)
    # What was sent plus the new residual is exactly the clipped, noised update: the residual
    # carries noised values only, never the raw update.
    update = out.local.weights.subtract(weights).flat()
    noised = privatize(update, applied, np.random.default_rng(TEST_SEED)).vector
    decoded = decode_delta(out.payload, public_keys={MACHINE: device_key.public_key()},
                           expected_base_fingerprint=weights.fingerprint(),
                           tensor_sizes=weights.tensor_sizes)
    np.testing.assert_allclose(decoded.vector + out.residual, noised, rtol=0, atol=1e-7)
    assert np.linalg.norm(update) > 0.01  # the clip was active: the raw update is larger


def test_the_privacy_table_in_the_agent_config(tmp_path: Path) -> None:
    base = ('machine_id = "m1"\n[model]\nbundle = "b"\ntrust_key = "k.pub"\n[[sources]]\n'
            'type = "replay"\npath = "plant.csv"\n[mqtt]\nhost = "127.0.0.1"\n')
    path = tmp_path / "agent.toml"
    path.write_text(base + "[learn.privacy]\nenabled = true\nclip_norm = 0.1\n")
    cfg = load_config(path, ())
    assert cfg.learn.privacy.required() == DevicePrivacy(clip_norm=0.1, noise_multiplier=1.0)
    path.write_text(base + "[learn.privacy]\nenabled = true\nseed = 3\n")
    with pytest.raises(ConfigErrors, match="seed"):
        load_config(path, ())
    path.write_text(base + "[learn.privacy]\nclip_norm = 0\n")
    with pytest.raises(ConfigErrors, match="clip_norm"):
        load_config(path, ())
