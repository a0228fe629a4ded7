"""One local round (edge_agent.learn.train_round): error feedback trains from global + residual.

A real signed bundle (tests/conftest.py), its float training weights, windows of a simulated
machine that differs from the bundle's, real Ed25519 keys. With a residual carried from an
earlier round the gateway starts training where its own earlier deltas would have left the
model, so the delta is ``local - global`` and the residual is not counted twice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from learn_support import announcement

from edge_agent.bundle.manifest import Manifest
from edge_agent.bundle.verify import verify_bundle
from edge_agent.data.table import SensorTable
from edge_agent.learn.bundle_weights import load_train_weights
from edge_agent.learn.delta import decode_delta
from edge_agent.learn.history import history_windows
from edge_agent.learn.local import train_local
from edge_agent.learn.train_round import Budget, run_round, training_config, training_start
from edge_agent.learn.weights import WeightSet
from edge_agent.simulator import MachineProfile, simulate_plant

MACHINE = "press-7"
CREATED_AT = "2026-01-01T00:00:00Z"
BUDGET = Budget(max_cpu_s=600.0, max_windows=600)
OTHER_MACHINE = MachineProfile(ambient_offset_c=8.0, vibration_offset_mms=1.0, noise_scale=1.3)
RESIDUAL_SCALE = 1e-3  # about the size of one round's unsent entries
FLOAT_TOL = 1e-6  # float32 sums of values of ~1e-2


@pytest.fixture(scope="module")
def model(bundle: Path, keys: Path) -> tuple[Manifest, WeightSet]:
    verified = verify_bundle(bundle, keys / "signing.pub")
    weights = load_train_weights(verified.path, verified.manifest)
    assert weights is not None
    return verified.manifest, weights


@pytest.fixture(scope="module")
def windows(model: tuple[Manifest, WeightSet]) -> np.ndarray:
    plant = simulate_plant(rows=1_500, seed=11, anomaly_fraction=0.0, profile=OTHER_MACHINE)
    table = SensorTable("local", plant.timestamps, plant.values, plant.channels)
    return history_windows(table, model[0], hop=2)[0]


def test_no_residual_starts_from_the_global_weights(model: tuple[Manifest, WeightSet]) -> None:
    _, weights = model
    assert training_start(weights, None) is weights
    with pytest.raises(ValueError, match="residual of shape"):
        training_start(weights, np.zeros(weights.size - 1, np.float32))


def test_a_residual_moves_the_start_and_the_delta_is_local_minus_global(
    bundle: Path, keys: Path, model: tuple[Manifest, WeightSet], windows: np.ndarray
) -> None:
    manifest, weights = model
    assert manifest.learning is not None
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    a = announcement(bundle, keys)
    residual = (np.random.default_rng(3).standard_normal(weights.size) * RESIDUAL_SCALE).astype(
        np.float32
    )
    out = run_round(manifest, weights, windows, a, BUDGET, machine_id=MACHINE, key=key,
                    residual=residual, created_at=CREATED_AT)
    start = training_start(weights, residual)
    np.testing.assert_array_equal(start.flat(), weights.flat() + residual)
    # the same seeded training from global + residual gives the same local weights
    again = train_local(start, windows, training_config(a, BUDGET), manifest.learning.layers)
    np.testing.assert_array_equal(out.local.weights.flat(), again.weights.flat())
    sent = decode_delta(out.payload, public_keys={MACHINE: key.public_key()},
                        expected_base_fingerprint=weights.fingerprint(),
                        tensor_sizes=weights.tensor_sizes).vector
    # what is sent plus what is kept is the whole way from the global weights to the local
    wanted = out.local.weights.flat() - weights.flat()
    np.testing.assert_allclose(sent + out.residual, wanted, rtol=0, atol=FLOAT_TOL)
    # training from the global weights (the old start) would have given another delta
    plain = run_round(manifest, weights, windows, a, BUDGET, machine_id=MACHINE, key=key,
                      residual=None, created_at=CREATED_AT)
    assert plain.payload != out.payload
