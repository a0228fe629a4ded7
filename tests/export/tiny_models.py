"""Tiny window models shared by the accelerator-variant tests (Edge TPU, ONNX).

A dilated 1-D conv and a dense autoencoder, each fitted for one epoch on the given windows, so
the converters see trained weights without the tests paying for real training.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

WINDOW = 16
CHANNELS = 4


def fitted_tiny_models(windows: np.ndarray, seed: int) -> dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(seed)

    inp = keras.Input((WINDOW, CHANNELS))
    x = keras.layers.Conv1D(8, 3, dilation_rate=2, padding="same", activation="relu")(inp)
    conv = keras.Model(inp, keras.layers.Dense(CHANNELS)(x), name="dilated_conv")

    inp = keras.Input((WINDOW, CHANNELS))
    x = keras.layers.Flatten()(inp)
    x = keras.layers.Dense(8, activation="relu")(x)
    x = keras.layers.Dense(WINDOW * CHANNELS)(x)
    dense = keras.Model(inp, keras.layers.Reshape((WINDOW, CHANNELS))(x), name="dense")
    built = {"dilated_conv": conv, "dense": dense}
    for model in built.values():
        model.compile(optimizer="adam", loss="mse")
        model.fit(windows, windows, epochs=1, batch_size=16, verbose=0)
    return built
