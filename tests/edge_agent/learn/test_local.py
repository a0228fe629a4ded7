"""A local round on a simulated machine: the loss falls, the CPU budget stops it, a seed
repeats it bit for bit; and the windows it trains on are the pipeline's own.

Uses the session's real signed dense bundle (trained on the reference compressor) and a
different compressor from the plant simulator (warmer room, some wear), as a gateway would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle.manifest import Manifest
from edge_agent.bundle.verify import verify_bundle
from edge_agent.data.table import SensorTable
from edge_agent.detect.cascade import Cascade, WindowScores
from edge_agent.detect.ring import WindowSource
from edge_agent.learn.bundle_weights import load_train_weights
from edge_agent.learn.dense import DenseAutoencoder
from edge_agent.learn.history import history_windows
from edge_agent.learn.local import LocalTrainingConfig, train_local
from edge_agent.learn.weights import WeightSet
from edge_agent.model_slot import load_cascade
from edge_agent.pipeline import run_pipeline
from edge_agent.simulator import MachineProfile, simulate_plant

LOCAL_ROWS = 3_000  # under an hour of history at the model's 1 s period
OTHER_MACHINE = MachineProfile(ambient_offset_c=8.0, vibration_offset_mms=1.0, noise_scale=1.3)


@pytest.fixture(scope="module")
def model(bundle: Path, keys: Path) -> tuple[Manifest, WeightSet]:
    verified = verify_bundle(bundle, keys / "signing.pub")
    weights = load_train_weights(verified.path, verified.manifest)
    assert weights is not None
    return verified.manifest, weights


@pytest.fixture(scope="module")
def local_table() -> SensorTable:
    plant = simulate_plant(rows=LOCAL_ROWS, seed=11, anomaly_fraction=0.0, profile=OTHER_MACHINE)
    return SensorTable("local", plant.timestamps, plant.values, plant.channels)


@pytest.fixture(scope="module")
def windows(model: tuple[Manifest, WeightSet], local_table: SensorTable) -> np.ndarray:
    manifest, _ = model
    x, ends = history_windows(local_table, manifest, hop=2)
    assert x.shape[1:] == (manifest.window.length, len(manifest.channels))
    assert np.all(np.diff(ends) > 0)
    return x


def _layers(manifest: Manifest) -> list:  # type: ignore[type-arg]
    assert manifest.learning is not None
    return list(manifest.learning.layers)


def test_loss_falls_on_another_machines_normal_data(
    model: tuple[Manifest, WeightSet], windows: np.ndarray
) -> None:
    manifest, start = model
    cfg = LocalTrainingConfig(epochs=3, batch_size=32, seed=1)
    result = train_local(start, windows, cfg, _layers(manifest))
    assert result.samples == windows.shape[0]
    assert result.epochs_run == 3
    assert result.steps == 3 * -(-windows.shape[0] // 32)
    assert not result.stopped_by_budget
    assert result.loss_last < result.loss_first
    activations = [layer.activation for layer in _layers(manifest)]
    before = DenseAutoencoder(start, activations).loss(windows)
    after = DenseAutoencoder(result.weights, activations).loss(windows)
    assert after < 0.9 * before
    assert result.weights.subtract(start).l2_norm() > 0
    assert result.cpu_s > 0


def test_the_cpu_budget_stops_the_round(
    model: tuple[Manifest, WeightSet], windows: np.ndarray
) -> None:
    manifest, start = model
    cfg = LocalTrainingConfig(epochs=50, max_cpu_s=1e-6, seed=1)
    result = train_local(start, windows, cfg, _layers(manifest))
    assert result.stopped_by_budget
    assert result.steps == 1  # the first step always runs, then the budget is spent
    assert result.epochs_run == 1
    assert result.loss_first == result.loss_last


def test_same_seed_same_weights_bit_for_bit(
    model: tuple[Manifest, WeightSet], windows: np.ndarray
) -> None:
    manifest, start = model
    cfg = LocalTrainingConfig(epochs=1, seed=7, prox_mu=0.1, max_windows=600)
    first = train_local(start, windows, cfg, _layers(manifest))
    again = train_local(start, windows, cfg, _layers(manifest))
    other = train_local(start, windows, cfg.model_copy(update={"seed": 8}), _layers(manifest))
    assert first.samples == 600
    assert first.weights.to_npz_bytes() == again.weights.to_npz_bytes()
    assert first.loss_first == again.loss_first
    assert other.weights.fingerprint() != first.weights.fingerprint()


def test_the_proximal_term_keeps_the_weights_nearer_the_global_ones(
    model: tuple[Manifest, WeightSet], windows: np.ndarray
) -> None:
    manifest, start = model
    cfg = LocalTrainingConfig(epochs=2, seed=3, max_windows=800)
    free = train_local(start, windows, cfg, _layers(manifest))
    held = train_local(start, windows, cfg.model_copy(update={"prox_mu": 50.0}), _layers(manifest))
    assert held.weights.subtract(start).l2_norm() < free.weights.subtract(start).l2_norm()


def test_bad_windows_are_named(model: tuple[Manifest, WeightSet], windows: np.ndarray) -> None:
    manifest, start = model
    cfg = LocalTrainingConfig()
    with pytest.raises(ValueError, match="expected normalized windows"):
        train_local(start, windows[:, :-1], cfg, _layers(manifest))
    with pytest.raises(ValueError, match="expected normalized windows"):
        train_local(start, windows[:0], cfg, _layers(manifest))
    bad = windows[:4].copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        train_local(start, bad, cfg, _layers(manifest))
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        LocalTrainingConfig(epochs=0)
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        LocalTrainingConfig.model_validate({"epoch": 2})


class _Recording(Cascade):
    """The bundle's cascade, keeping every window the pipeline hands it."""

    def __init__(self, inner: Cascade) -> None:
        super().__init__(
            forest=inner.forest,
            screen_threshold=inner.screen_threshold,
            autoencoder=inner.autoencoder,
            threshold=inner.threshold,
        )
        self.seen: list[np.ndarray] = []

    def score(
        self, windows: np.ndarray | WindowSource, features: np.ndarray, *, screen: bool = True
    ) -> WindowScores:
        # the pipeline hands a lazy WindowSource (edge_agent.detect.ring): gather them all
        every = np.arange(windows.shape[0], dtype=np.intp)
        self.seen.append(np.array(windows[every]) if every.size else np.zeros(windows.shape))
        return super().score(windows, features, screen=screen)


def test_history_windows_are_the_pipelines_own(
    bundle: Path, keys: Path, local_table: SensorTable
) -> None:
    verified = verify_bundle(bundle, keys / "signing.pub")
    # Holes in the data: held samples, a new segment, a window with too many imputed cells.
    values = local_table.values.copy()
    values[500:503, 1] = np.nan
    values[900:960, :] = np.nan
    table = SensorTable("holes", local_table.timestamps, values, local_table.channels)
    recorder = _Recording(load_cascade(verified))
    run_pipeline(table, verified.manifest, recorder, screen=False)
    streamed = np.concatenate(recorder.seen)
    ours, _ = history_windows(table, verified.manifest)
    assert ours.shape == streamed.shape
    assert np.array_equal(ours, streamed)


def test_blas_runs_on_one_thread_during_a_round() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from edge_agent.learn.local import _single_threaded_blas

    with _single_threaded_blas():
        inside = [
            p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"
        ]
    assert inside
    assert set(inside) == {1}


PROBE_TIMEOUT_S = 120
# 40 windows in batches of 8 for 2 epochs: 10 steps, with the desk's stacks made unimportable.
NO_DESK_PROBE = """
import sys
for name in ("tensorflow", "sklearn", "keras", "scipy", "pandas", "matplotlib"):
    sys.modules[name] = None
import numpy as np
from edge_agent.bundle.manifest import LearningLayerSpec
from edge_agent.learn import bundle_weights, history  # noqa: F401
from edge_agent.learn.local import LocalTrainingConfig, train_local
from edge_agent.learn.weights import WeightSet
rng = np.random.default_rng(0)
shapes = [(12, 4), (4,), (4, 12), (12,)]
names = ("dense_0/kernel", "dense_0/bias", "dense_1/kernel", "dense_1/bias")
start = WeightSet(names, tuple(rng.normal(size=s).astype(np.float32) for s in shapes))
layers = [LearningLayerSpec(units=4, activation="relu"),
          LearningLayerSpec(units=12, activation="linear")]
windows = rng.normal(size=(40, 4, 3)).astype(np.float32)
result = train_local(start, windows, LocalTrainingConfig(epochs=2, batch_size=8), layers)
print("STEPS", result.steps)
"""


def test_local_training_runs_without_desk_stacks() -> None:
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run(
        [sys.executable, "-c", NO_DESK_PROBE],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "STEPS 10" in proc.stdout
