"""Dense (fully connected) window autoencoder: the smallest, fastest model kind.

Pipeline position: trainer stage 2. After the Isolation Forest screen, windows of
normalized samples, shape ``(W, C)``, are reconstructed by an autoencoder whose
reconstruction error is the anomaly score. ``export.tflite_int8`` turns the trained
model into a full-integer int8 TFLite file that ``edge_agent`` runs on the gateway.

Architecture: Flatten -> Dense(hidden, relu) -> Dense(latent, relu) -> Dense(hidden, relu)
-> Dense(W*C, linear) -> Reshape(W, C). Every op is a FULLY_CONNECTED or RESHAPE in
TFLite, all of which have int8 kernels, so this kind always quantizes cleanly.
"""

from __future__ import annotations

import keras

from trainer.models.common import compile_autoencoder, resolve_latent

KIND = "dense"

# Sized for W in 16..64 and C in 5..10 (80..640 inputs): large enough to learn the
# normal manifold, small enough that a Raspberry Pi runs hundreds of windows per second.
DEFAULT_HIDDEN = 64
DEFAULT_LATENT = 16


def build_dense_autoencoder(
    window: int,
    channels: int,
    *,
    latent: int | None = None,
    seed: int = 0,
    hidden: int = DEFAULT_HIDDEN,
) -> keras.Model:
    """Build and compile (Adam + MSE) a dense autoencoder mapping ``(W, C)`` to ``(W, C)``.

    ``latent`` is the bottleneck width (default ``DEFAULT_LATENT``); ``seed`` fixes the
    weight initialisation so two builds with the same arguments are identical.
    """
    latent_units = resolve_latent(window, channels, latent, DEFAULT_LATENT)

    # One seed per layer: a Keras 3 initializer with a fixed seed yields the same
    # tensor on every call, so sharing one instance would make same-shape layers equal.
    def dense(units: int, index: int, activation: str | None) -> keras.layers.Dense:
        return keras.layers.Dense(
            units,
            activation=activation,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + index),
            name=f"dense_{index}",
        )

    inputs = keras.Input(shape=(window, channels), name="window")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = dense(hidden, 0, "relu")(x)
    x = dense(latent_units, 1, "relu")(x)
    x = dense(hidden, 2, "relu")(x)
    # Linear output: normalized sensor values are signed and unbounded.
    x = dense(window * channels, 3, None)(x)
    outputs = keras.layers.Reshape((window, channels), name="reconstruction")(x)

    model = keras.Model(inputs, outputs, name=f"{KIND}_autoencoder")
    compile_autoencoder(model)
    return model
