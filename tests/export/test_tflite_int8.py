"""Full-integer int8 export (``export.tflite_int8``) of every autoencoder kind.

Pipeline position: the desk-side step between ``trainer.models`` and the gateway's
``edge_agent.detect.autoencoder.Int8Autoencoder``. Each kind is built tiny (W=16,
C=4), fitted for one epoch on synthetic sensor-like windows, converted to int8 and
float32 TFLite, and checked for: int8 I/O, no float tensors left, reconstructions
close to Keras, and identical per-window results at batch 1 and batch 37.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from edge_agent.detect.autoencoder import Int8Autoencoder
from edge_agent.interpreter import load_interpreter
from export.errors import ExportError
from export.tflite_int8 import convert_float, convert_int8, ops_with_float_tensors

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WINDOW = 16
CHANNELS = 4
TRAIN_WINDOWS = 128
FIT_BATCH = 64
ODD_BATCH = 37  # not a divisor of anything the converter saw, to exercise resizing
KINDS = ("dense", "conv", "lstm")
# Mean |int8 - Keras| over mean |input|, per kind. Measured after one epoch: dense
# 0.0024, conv 0.043, lstm 0.0035. The conv model is deepest (21 quantized convs, 10
# residual adds, 2 concatenations), so its rounding errors compound the most.
MAX_REL_INT8_ERROR = {"dense": 0.02, "conv": 0.08, "lstm": 0.02}
# Float TFLite runs the same float32 graph as Keras; only op ordering differs.
FLOAT_ATOL = 1e-4


def synthetic_windows(n: int, seed: int = 0) -> np.ndarray:
    """Normalized, correlated multichannel sine waves with noise, as (n, W, C) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(n + WINDOW, dtype=np.float64)[:, None]
    periods = np.array([11.0, 17.0, 23.0, 31.0])[:CHANNELS]
    series = np.sin(2 * np.pi * t / periods + np.arange(CHANNELS))
    series += 0.1 * rng.standard_normal(series.shape)
    series = (series - series.mean(0)) / series.std(0)
    windows = np.stack([series[i : i + WINDOW] for i in range(n)])
    return windows.astype(np.float32)


@dataclass(frozen=True)
class Converted:
    kind: str
    model: Any
    windows: np.ndarray
    keras_out: np.ndarray
    int8: bytes
    float32: bytes


@pytest.fixture(scope="module", params=KINDS)
def converted(request: pytest.FixtureRequest) -> Converted:
    import keras

    from trainer.models import build_autoencoder

    kind = request.param
    model = build_autoencoder(kind, WINDOW, CHANNELS, seed=0)
    # Re-compiled eagerly only to keep the test fast: for a couple of steps, tracing
    # the train function costs more than it saves. Same optimizer and loss.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", run_eagerly=True)
    windows = synthetic_windows(TRAIN_WINDOWS)
    model.fit(windows, windows, epochs=1, batch_size=FIT_BATCH, verbose=0)
    keras_out = np.asarray(model.predict(windows, verbose=0), dtype=np.float32)
    return Converted(
        kind=kind,
        model=model,
        windows=windows,
        keras_out=keras_out,
        int8=convert_int8(model, windows),
        float32=convert_float(model),
    )


def test_int8_model_has_int8_io_and_dynamic_batch(converted: Converted) -> None:
    interpreter, _ = load_interpreter(converted.int8)
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    assert inp["dtype"] == np.int8
    assert out["dtype"] == np.int8
    assert inp["quantization"][0] > 0.0
    assert out["quantization"][0] > 0.0
    assert list(inp["shape_signature"]) == [-1, WINDOW, CHANNELS]
    assert Int8Autoencoder(converted.int8).is_int8


def test_int8_model_has_no_float_ops(converted: Converted) -> None:
    assert ops_with_float_tensors(converted.int8) == []
    # The checker does see float ops when they are there.
    assert ops_with_float_tensors(converted.float32)


def test_int8_reconstruction_tracks_keras(converted: Converted) -> None:
    x, ref = converted.windows, converted.keras_out
    got = Int8Autoencoder(converted.int8).reconstruct(x)
    assert got.dtype == np.float32
    assert got.shape == x.shape
    rel = float(np.mean(np.abs(got - ref)) / np.mean(np.abs(x)))
    assert rel < MAX_REL_INT8_ERROR[converted.kind], f"{converted.kind}: {rel:.4f}"
    # What the detector uses, the per-window reconstruction error, stays close too.
    err_ref = np.mean((ref - x) ** 2, axis=(1, 2))
    err_q = np.mean((got - x) ** 2, axis=(1, 2))
    assert np.corrcoef(err_ref, err_q)[0, 1] > 0.9


def test_float_tflite_matches_keras(converted: Converted) -> None:
    runner = Int8Autoencoder(converted.float32)
    assert not runner.is_int8
    got = runner.reconstruct(converted.windows)
    np.testing.assert_allclose(got, converted.keras_out, atol=FLOAT_ATOL)


def test_batch_1_and_batch_37_agree(converted: Converted) -> None:
    x = converted.windows[:ODD_BATCH]
    one_at_a_time = Int8Autoencoder(converted.int8, max_batch=1).reconstruct(x)
    all_at_once = Int8Autoencoder(converted.int8).reconstruct(x)
    interpreter, _ = load_interpreter(converted.int8)
    step = interpreter.get_output_details()[0]["quantization"][0]
    # Integer kernels are batch-independent; allow one int8 step for SIMD paths.
    np.testing.assert_allclose(one_at_a_time, all_at_once, atol=step * 1.001)


@pytest.mark.parametrize("converted", ["dense"], indirect=True)  # one kind: conversions are slow
def test_int8_conversion_is_deterministic(converted: Converted) -> None:
    many = synthetic_windows(300, seed=1)
    first = convert_int8(converted.model, many, max_samples=50, seed=3)
    again = convert_int8(converted.model, many, max_samples=50, seed=3)
    assert first == again


@pytest.mark.parametrize("converted", ["dense"], indirect=True)
def test_saved_model_fallback_converts(
    converted: Converted, monkeypatch: pytest.MonkeyPatch
) -> None:
    import export.tflite_int8 as module

    def no_freezer(*_: Any) -> Any:
        raise ImportError("simulated TensorFlow without convert_variables_to_constants_v2")

    monkeypatch.setattr(module, "_frozen_converter", no_freezer)
    content = convert_int8(converted.model, converted.windows)
    assert ops_with_float_tensors(content) == []
    got = Int8Autoencoder(content).reconstruct(converted.windows)
    rel = float(np.mean(np.abs(got - converted.keras_out)) / np.mean(np.abs(converted.windows)))
    assert rel < MAX_REL_INT8_ERROR["dense"]


@pytest.mark.parametrize(
    ("windows", "match"),
    [
        (np.zeros((4, WINDOW + 1, CHANNELS), np.float32), r"\(n, 16, 4\)"),
        (np.zeros((0, WINDOW, CHANNELS), np.float32), r"n >= 1"),
        (np.full((4, WINDOW, CHANNELS), np.nan, np.float32), "finite"),
    ],
)
def test_bad_representative_windows_raise(
    converted: Converted, windows: np.ndarray, match: str
) -> None:
    with pytest.raises(ExportError, match=match):
        convert_int8(converted.model, windows)


def test_recurrent_loop_is_refused_before_calibration() -> None:
    import keras

    # A default (rolled) LSTM traces to a While loop; int8 calibration of a WHILE op
    # segfaults in TF 2.21, so export must refuse it with an ExportError instead.
    inputs = keras.Input((WINDOW, CHANNELS))
    hidden = keras.layers.LSTM(4, return_sequences=True)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(CHANNELS)(hidden), name="lstm_autoencoder")
    with pytest.raises(ExportError, match=r"^lstm: .*unroll=True"):
        convert_int8(model, synthetic_windows(8))


def test_registry_builds_compiled_models_and_rejects_unknown_kinds() -> None:
    from trainer.models import build_autoencoder

    model = build_autoencoder("dense", WINDOW, CHANNELS, latent=8, seed=5)
    assert model.name == "dense_autoencoder"
    assert model.optimizer is not None
    assert model.loss == "mse"
    assert model.output_shape == (None, WINDOW, CHANNELS)
    twin = build_autoencoder("dense", WINDOW, CHANNELS, latent=8, seed=5)
    for a, b in zip(model.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="conv, dense, lstm"):
        build_autoencoder("transformer", WINDOW, CHANNELS)
