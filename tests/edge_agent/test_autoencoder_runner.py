"""Gateway autoencoder runner (``edge_agent.detect.autoencoder``) and interpreter loader.

Pipeline position: stage 2 on the gateway. The models are built on the desk side
here (TensorFlow is only needed to *make* the test models); what is tested is the
runner itself: shape validation, batching and re-allocation, float and int8 paths,
the static-batch fallback, backend selection, and that it works with TensorFlow
blocked.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edge_agent.interpreter as interpreter_module
from edge_agent.detect.autoencoder import Int8Autoencoder
from edge_agent.interpreter import load_interpreter

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[2]
WINDOW = 16
CHANNELS = 4
STATIC_BATCH = 3
FLOAT_ATOL = 1e-5


@dataclass(frozen=True)
class Models:
    windows: np.ndarray
    keras_out: np.ndarray
    float32: bytes
    int8: bytes
    static_float32: bytes


@pytest.fixture(scope="module")
def models() -> Models:
    pytest.importorskip("tensorflow")
    import keras
    import tensorflow as tf

    from export.tflite_int8 import convert_float, convert_int8
    from trainer.models import build_autoencoder

    rng = np.random.default_rng(0)
    windows = rng.standard_normal((64, WINDOW, CHANNELS)).astype(np.float32)
    # Untrained is fine: the runner must reproduce whatever the model computes.
    model = build_autoencoder("dense", WINDOW, CHANNELS, seed=0)
    # A model frozen at batch STATIC_BATCH, as a static-shape backend would produce.
    fixed_in = keras.Input(batch_shape=(STATIC_BATCH, WINDOW, CHANNELS))
    fixed = keras.Model(fixed_in, model(fixed_in))
    static = tf.lite.TFLiteConverter.from_keras_model(fixed).convert()
    return Models(
        windows=windows,
        keras_out=np.asarray(model.predict(windows, verbose=0), dtype=np.float32),
        float32=convert_float(model),
        int8=convert_int8(model, windows),
        static_float32=bytes(static),
    )


def test_backend_is_ai_edge_litert(models: Models, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="edge_agent.interpreter"):
        _, name = load_interpreter(models.float32)
    assert name == "ai-edge-litert"
    assert "ai-edge-litert" in caplog.text
    assert Int8Autoencoder(models.float32).backend == "ai-edge-litert"


def test_properties(models: Models) -> None:
    runner = Int8Autoencoder(models.int8, max_batch=8)
    assert (runner.window, runner.channels) == (WINDOW, CHANNELS)
    assert runner.is_int8
    assert runner.max_batch == 8
    assert not Int8Autoencoder(models.float32).is_int8


@pytest.mark.parametrize(
    "shape",
    [(WINDOW, CHANNELS), (2, WINDOW + 1, CHANNELS), (2, WINDOW, CHANNELS - 1), (2, 1, 2, 3)],
)
def test_wrong_shape_names_expected_shape(models: Models, shape: tuple[int, ...]) -> None:
    runner = Int8Autoencoder(models.int8)
    with pytest.raises(ValueError, match=r"expected windows of shape \(n, 16, 4\)"):
        runner.reconstruct(np.zeros(shape, np.float32))


def test_non_finite_windows_are_rejected(models: Models) -> None:
    x = models.windows[:2].copy()
    x[1, 3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Int8Autoencoder(models.int8).reconstruct(x)


def test_empty_batch_returns_empty(models: Models) -> None:
    out = Int8Autoencoder(models.int8).reconstruct(np.zeros((0, WINDOW, CHANNELS), np.float32))
    assert out.shape == (0, WINDOW, CHANNELS)
    assert out.dtype == np.float32


def test_float_model_path_matches_keras(models: Models) -> None:
    got = Int8Autoencoder(models.float32).reconstruct(models.windows)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, models.keras_out, atol=FLOAT_ATOL)


def test_float64_input_is_accepted(models: Models) -> None:
    runner = Int8Autoencoder(models.float32)
    got = runner.reconstruct(models.windows[:5].astype(np.float64))
    np.testing.assert_allclose(got, models.keras_out[:5], atol=FLOAT_ATOL)


def test_max_batch_splits_without_changing_results(models: Models) -> None:
    whole = Int8Autoencoder(models.int8).reconstruct(models.windows)
    split = Int8Autoencoder(models.int8, max_batch=5).reconstruct(models.windows)
    np.testing.assert_array_equal(whole, split)


class _CountingInterpreter:
    """Delegates to a real interpreter, counting allocate_tensors calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.allocations = 0

    def allocate_tensors(self) -> None:
        self.allocations += 1
        self.inner.allocate_tensors()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_tensors_are_reallocated_only_when_batch_size_changes(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edge_agent.detect.autoencoder as runner_module

    spies: list[_CountingInterpreter] = []

    def spying_loader(model_bytes: bytes, *, num_threads: int = 1) -> tuple[Any, str]:
        real, name = load_interpreter(model_bytes, num_threads=num_threads)
        spies.append(_CountingInterpreter(real))
        return spies[-1], name

    monkeypatch.setattr(runner_module, "load_interpreter", spying_loader)
    runner = Int8Autoencoder(models.int8)
    (spy,) = spies
    assert spy.allocations == 1  # at construction, batch 1
    runner.reconstruct(models.windows[:10])
    runner.reconstruct(models.windows[10:20])
    assert spy.allocations == 2  # one resize to 10, reused by the second call
    runner.reconstruct(models.windows[:1])
    assert spy.allocations == 3


def test_static_batch_model_is_padded_not_resized(models: Models) -> None:
    runner = Int8Autoencoder(models.static_float32, max_batch=64)
    assert runner.max_batch == STATIC_BATCH
    x = models.windows[:7]  # 3 + 3 + 1 padded to 3
    np.testing.assert_allclose(runner.reconstruct(x), models.keras_out[:7], atol=FLOAT_ATOL)


def test_invalid_arguments(models: Models) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        Int8Autoencoder(models.int8, max_batch=0)
    with pytest.raises(ValueError, match="num_threads"):
        load_interpreter(models.int8, num_threads=0)


def test_missing_runtime_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Any:
        raise ImportError("not installed")

    monkeypatch.setattr(
        interpreter_module,
        "_BACKENDS",
        tuple((name, missing) for name, _ in interpreter_module._BACKENDS),
    )
    with pytest.raises(RuntimeError, match=r'pip install "edge-anomaly\[edge\]"'):
        load_interpreter(b"")


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_falls_back_to_tensorflow_when_light_runtimes_are_missing(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> Any:
        raise ImportError("not installed")

    monkeypatch.setattr(
        interpreter_module,
        "_BACKENDS",
        tuple(
            (name, factory if name == "tensorflow" else missing)
            for name, factory in interpreter_module._BACKENDS
        ),
    )
    runner = Int8Autoencoder(models.float32)
    assert runner.backend == "tensorflow"
    np.testing.assert_allclose(
        runner.reconstruct(models.windows), models.keras_out, atol=FLOAT_ATOL
    )


PROBE = """
import sys
# As on a gateway: the desk-only stacks are not importable at all.
for name in ("tensorflow", "keras", "sklearn"):
    sys.modules[name] = None
import numpy as np
from edge_agent.detect.autoencoder import Int8Autoencoder
runner = Int8Autoencoder(open(sys.argv[1], "rb").read())
out = runner.reconstruct(np.zeros((5, runner.window, runner.channels), np.float32))
print("OK", runner.backend, out.shape)
"""


def test_runs_with_tensorflow_blocked(models: Models, tmp_path: Path) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(models.int8)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"OK ai-edge-litert (5, {WINDOW}, {CHANNELS})" in proc.stdout


@pytest.mark.parametrize(("steps", "channels"), [(32, 1), (16, 5), (32, 8), (8, 9), (200, 1)])
def test_reconstruction_error_kernel_matches_numpy(steps: int, channels: int) -> None:
    # The threshold was calibrated on numpy's float64 sums; the Numba kernel must give the
    # same numbers to the last bit, including where numpy switches to pairwise summation.
    from edge_agent.detect.cascade import reconstruction_error

    rng = np.random.default_rng(steps * 100 + channels)
    w = rng.normal(size=(6, steps, channels)).astype(np.float32)
    r = (w + rng.normal(scale=0.1, size=w.shape)).astype(np.float32)
    err, share = reconstruction_error(w, r, "mean")
    per_channel = np.square(w.astype(np.float64) - r.astype(np.float64)).mean(axis=1)
    np.testing.assert_array_equal(err, per_channel.mean(axis=1))
    total = per_channel.sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(share, (per_channel / total).astype(np.float32))
    worst, worst_share = reconstruction_error(w, r, "channel_max")
    np.testing.assert_array_equal(worst, per_channel.max(axis=1))
    np.testing.assert_array_equal(worst_share, share)


def test_channel_max_keeps_a_one_channel_fault_undiluted() -> None:
    from edge_agent.detect.cascade import reconstruction_error

    rng = np.random.default_rng(7)
    w = rng.normal(size=(4, 32, 8)).astype(np.float32)
    r = (w + rng.normal(scale=0.1, size=w.shape)).astype(np.float32)
    spiked = w.copy()
    spiked[:, -3:, 5] += 3.0  # three samples of one of eight channels
    added = {
        stat: reconstruction_error(spiked, r, stat)[0] - reconstruction_error(w, r, stat)[0]
        for stat in ("mean", "channel_max")
    }
    # The fault adds about 27/32 to its channel's mean square, and 8 times less to the mean.
    assert np.all(added["mean"] > 0)
    assert np.all(added["channel_max"] > 6 * added["mean"])
    with pytest.raises(ValueError, match="unknown error statistic 'median'"):
        reconstruction_error(w, r, "median")  # type: ignore[arg-type]
