"""LSTM window autoencoder that converts to full-integer int8 TFLite.

Pipeline position: trainer stage 2 (see ``trainer.models``); quantized by
``export.tflite_int8`` and run on the gateway by ``edge_agent``.

Architecture: LSTM encoder (last hidden state) -> Dense latent code -> RepeatVector(W)
-> LSTM decoder (full sequence) -> Dense(C) applied per time step, linear output.

Why ``unroll=True`` (measured with TensorFlow 2.21, Keras 3.15, ai-edge-litert 2.3):

* Default (``unroll=False``): Keras 3 runs the recurrence as a ``tf.while_loop`` over
  a TensorList. The TFLite converter fails for float32 *and* int8 with
  "'tf.TensorListReserve' op requires element_shape to be static" because the batch
  is dynamic; it suggests SELECT_TF_OPS (Flex), which the int8-only gateway build
  cannot use. Tracing with a static batch ``(1, W, C)`` gets the float model through
  as a WHILE op, but int8 calibration of that WHILE segfaults the Python process
  (exit 139), so ``export.tflite_int8`` refuses loop ops before calibrating.
* ``unroll=True`` (used here): the loop is traced as W copies of the cell, so TFLite
  sees only FULLY_CONNECTED, SPLIT, LOGISTIC, TANH, MUL and ADD, all with int8
  kernels. Full int8 conversion succeeds with a dynamic batch (resizable at run
  time), and int8 output tracks the Keras float output closely (cell state and gates
  are calibrated like any other activation).

The cost of unrolling: the graph grows linearly with W (about 30 ops per step per
layer), so conversion is slower and the file larger than the dense model's: about
170 kB at W=16 and 860 kB / 13 s to convert at W=64, C=10 (hidden=32). Keep W <= ~64
for this kind.
"""

from __future__ import annotations

import itertools

import keras

from trainer.models.common import compile_autoencoder, resolve_latent, unrolled_lstm

KIND = "lstm"

# Sized for W in 16..64 and C in 5..10; the unrolled graph grows with hidden * W.
DEFAULT_HIDDEN = 32
DEFAULT_LATENT = 16


def build_lstm_autoencoder(
    window: int,
    channels: int,
    *,
    latent: int | None = None,
    seed: int = 0,
    hidden: int = DEFAULT_HIDDEN,
) -> keras.Model:
    """Build and compile (Adam + MSE) an unrolled LSTM encoder/decoder autoencoder.

    ``latent`` is the width of the code between encoder and decoder (default
    ``DEFAULT_LATENT``); ``seed`` fixes the initialisation.
    """
    latent_units = resolve_latent(window, channels, latent, DEFAULT_LATENT)

    # Distinct seed per initializer: a seeded Keras 3 initializer repeats its tensor.
    seeds = itertools.count(seed)

    inputs = keras.Input(shape=(window, channels), name="window")
    x = unrolled_lstm(hidden, "encoder", seeds, sequences=False)(inputs)
    z = keras.layers.Dense(
        latent_units,
        kernel_initializer=keras.initializers.GlorotUniform(seed=next(seeds)),
        name="latent",
    )(x)
    x = keras.layers.RepeatVector(window, name="repeat")(z)
    x = unrolled_lstm(hidden, "decoder", seeds, sequences=True)(x)
    outputs = keras.layers.Dense(
        channels,
        kernel_initializer=keras.initializers.GlorotUniform(seed=next(seeds)),
        name="reconstruction",
    )(x)
    model = keras.Model(inputs, outputs, name=f"{KIND}_autoencoder")
    compile_autoencoder(model)
    return model
