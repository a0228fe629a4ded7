"""trainer.quant_aware: fine-tuning through int8 rounding, judged by the real int8 TFLite copy."""

from __future__ import annotations

import os

import numpy as np
import numpy.typing as npt

from edge_agent.detect.autoencoder import Int8Autoencoder
from export.tflite_int8 import convert_int8
from trainer.config import AutoencoderConfig, TrainConfig
from trainer.fit import KerasReconstructor, train_autoencoder
from trainer.models import build_autoencoder
from trainer.quant_aware import dense_chain, fine_tune, int8_calibration_windows

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

F32 = npt.NDArray[np.float32]
STEPS, CHANNELS = 16, 3
# Quiet enough that int8 rounding is a visible share of the reconstruction error.
NOISE = 0.02


def _machine(rng: np.random.Generator, n: int) -> F32:
    """Windows at a steady level with noise; every 20th holds a stop (every channel steps to
    0 at a random sample), the rare pattern int8 rounding reproduced worst."""
    x = 1.0 + NOISE * rng.standard_normal((n, STEPS, CHANNELS))
    for i in range(0, n, 20):
        x[i, rng.integers(2, STEPS - 2) :, :] = NOISE * rng.standard_normal(CHANNELS)
    return x.astype(np.float32)


def _int8_excess(model: object, calibration: F32, test: F32) -> float:
    """How much larger the int8 copy's reconstruction error is than the float model's (a
    fraction of the float error): what raises int8's threshold over float's."""
    q = Int8Autoencoder(convert_int8(model, calibration, seed=0))
    int8 = float(np.square(q.reconstruct(test) - test).mean())
    float_ = float(np.square(KerasReconstructor(model).reconstruct(test) - test).mean())
    return (int8 - float_) / float_


def test_only_the_dense_kind_is_a_chain_of_dense_layers() -> None:
    dense = build_autoencoder("dense", STEPS, CHANNELS, seed=0)
    layers = dense_chain(dense)
    assert layers is not None
    assert [layer.name for layer in layers] == ["dense_0", "dense_1", "dense_2", "dense_3"]
    assert dense_chain(build_autoencoder("conv", STEPS, CHANNELS, seed=0)) is None


def test_fine_tuning_brings_the_int8_copy_closer_to_the_float_model() -> None:
    """The int8 copy's excess error: 8.6 % of float's before, 4.0 % after (measured)."""
    rng = np.random.default_rng(0)
    train, test = _machine(rng, 2000), _machine(rng, 600)
    model = build_autoencoder("dense", STEPS, CHANNELS, seed=0)
    model.fit(train, train, epochs=20, batch_size=64, verbose=0, shuffle=False)
    representative = train[::4]
    calibration = int8_calibration_windows(representative, seed=0)
    before = _int8_excess(model, calibration, test)
    epochs = fine_tune(
        model, train, test, representative, epochs=6, learning_rate=1e-4, batch_size=64
    )
    assert epochs == 6
    after = _int8_excess(model, calibration, test)
    assert before > 0.05, before
    assert after < 0.6 * before, (before, after)


def test_a_fine_tuning_that_makes_things_worse_is_not_kept() -> None:
    """A learning rate that wrecks the model: the starting weights are handed back."""
    rng = np.random.default_rng(1)
    train = _machine(rng, 500)
    model = build_autoencoder("dense", STEPS, CHANNELS, seed=0)
    model.fit(train, train, epochs=4, batch_size=64, verbose=0, shuffle=False)
    start = [w.copy() for w in model.get_weights()]
    fine_tune(
        model,
        train,
        train[:100],
        train[::4],
        epochs=2,
        learning_rate=50.0,
        batch_size=64,
    )
    for now, then in zip(model.get_weights(), start, strict=True):
        np.testing.assert_array_equal(now, then)


def test_other_kinds_are_left_as_they_are() -> None:
    rng = np.random.default_rng(2)
    train = _machine(rng, 200)
    model = build_autoencoder("conv", STEPS, CHANNELS, seed=0)
    start = [w.copy() for w in model.get_weights()]
    assert fine_tune(model, train, train, train, epochs=3, learning_rate=1e-4, batch_size=64) == 0
    for now, then in zip(model.get_weights(), start, strict=True):
        np.testing.assert_array_equal(now, then)


def test_training_ends_with_the_fine_tuning_an_eighth_as_long() -> None:
    rng = np.random.default_rng(3)
    train = _machine(rng, 400)

    def trained(quant_epochs: int | None) -> tuple[list[npt.NDArray[np.float32]], int]:
        ae = AutoencoderConfig(
            epochs=16, rare_window_epochs=0, patience=50, quantization_aware_epochs=quant_epochs
        )
        model, info = train_autoencoder(train, train[:100], TrainConfig(autoencoder=ae), seed=0)
        return model.get_weights(), info["quantization_aware_epochs_run"]

    tuned, epochs = trained(None)
    plain, none = trained(0)
    assert (epochs, none) == (2, 0)
    assert any(not np.array_equal(a, b) for a, b in zip(tuned, plain, strict=True))
