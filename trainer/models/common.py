"""What every autoencoder builder shares: argument checks and the compile step.

The trainer overrides the learning rate from its config after building; this default only
matters when a builder is used on its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import keras

LEARNING_RATE = 1e-3


def resolve_latent(window: int, channels: int, latent: int | None, default: int) -> int:
    """Check the window shape and return the latent size (``default`` when not given)."""
    if window < 1 or channels < 1:
        raise ValueError(f"window and channels must be >= 1, got {window=} {channels=}")
    size = default if latent is None else latent
    if size < 1:
        raise ValueError(f"latent must be >= 1, got {size}")
    return size


def compile_autoencoder(model: keras.Model) -> keras.Model:
    """Adam + mean squared reconstruction error, the loss every kind is trained with."""
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="mse")
    return model


def unrolled_lstm(
    units: int, name: str, seeds: Iterator[int], *, sequences: bool
) -> keras.layers.LSTM:
    """An LSTM unrolled over the window, so TFLite sees plain int8-capable ops instead of a
    WHILE loop (the full-integer conversion refuses the loop). Its kernel and recurrent
    initializers take the next two seeds from ``seeds``, in that order."""
    return keras.layers.LSTM(
        units,
        return_sequences=sequences,
        unroll=True,
        kernel_initializer=keras.initializers.GlorotUniform(seed=next(seeds)),
        recurrent_initializer=keras.initializers.Orthogonal(seed=next(seeds)),
        name=name,
    )
