"""CNN-LSTM window autoencoder with additive attention over the encoder's time steps.

Pipeline position: trainer stage 2 (see ``trainer.models``); quantized by
``export.tflite_int8`` and run on the gateway by ``edge_agent``.

Architecture: two Conv1D feature extractors (kernel 3, 'same', relu) -> LSTM encoder
over every time step -> additive attention (Bahdanau style: score_t = v . tanh(W h_t),
softmax over time, context = sum_t a_t h_t) -> Dense latent code -> RepeatVector(W)
-> LSTM decoder -> Dense(C) per time step, linear output. The attention context is the
only path from encoder to decoder, so it stays a bottleneck.

What converts to full int8 (TensorFlow 2.21, Keras 3.15, ai-edge-litert 2.3, W=32, C=4,
measured with ``export.tflite_int8.convert_int8`` and run in LiteRT):

* The LSTMs must be built with ``unroll=True``, for the reason given in
  ``trainer.models.lstm`` (a ``tf.while_loop`` needs Flex or a WHILE op whose int8
  calibration crashes; ``export.tflite_int8`` refuses it before calibrating).
* Attention built from Dense / Softmax / Dot (used here), the same with Multiply and a
  sum over time, ``keras.layers.Attention`` (dot-product self-attention) and
  ``keras.layers.MultiHeadAttention`` (2 heads) all converted with int8 I/O and no
  float tensor left; int8 reconstructions were within 0.3-0.5 % of Keras's (mean
  |int8 - float| over mean |input|) and the per-window errors correlated >= 0.999.
  Additive attention is kept: it is the form the CNN-LSTM-attention papers use, it
  pools the sequence to one context vector (a real bottleneck), and it is the cheapest.
"""

from __future__ import annotations

import itertools

import keras

from trainer.models.common import compile_autoencoder, resolve_latent, unrolled_lstm

KIND = "cnn_lstm_attn"

DEFAULT_FILTERS = 16  # Conv1D feature maps per time step
CONV_KERNEL = 3  # time steps each conv sees
CONV_LAYERS = 2
DEFAULT_HIDDEN = 32  # LSTM units; the unrolled graph grows with hidden * W
ATTENTION_UNITS = 16  # width of the tanh layer that scores each time step
DEFAULT_LATENT = 16


def build_cnn_lstm_attn_autoencoder(
    window: int,
    channels: int,
    *,
    latent: int | None = None,
    seed: int = 0,
    filters: int = DEFAULT_FILTERS,
    hidden: int = DEFAULT_HIDDEN,
) -> keras.Model:
    """Build and compile (Adam + MSE) a CNN-LSTM autoencoder with additive attention.

    ``latent`` is the width of the code between encoder and decoder (default
    ``DEFAULT_LATENT``); ``seed`` fixes the initialisation.
    """
    latent_units = resolve_latent(window, channels, latent, DEFAULT_LATENT)

    # Distinct seed per initializer: a seeded Keras 3 initializer repeats its tensor.
    seeds = itertools.count(seed)

    def glorot() -> keras.initializers.Initializer:
        return keras.initializers.GlorotUniform(seed=next(seeds))

    inputs = keras.Input(shape=(window, channels), name="window")
    x = inputs
    for i in range(CONV_LAYERS):
        x = keras.layers.Conv1D(
            filters,
            CONV_KERNEL,
            padding="same",
            activation="relu",
            kernel_initializer=keras.initializers.HeNormal(seed=next(seeds)),
            name=f"features_{i}",
        )(x)
    h = unrolled_lstm(hidden, "encoder", seeds, sequences=True)(x)

    # Additive attention: one score per time step, softmax over time, weighted sum.
    scores = keras.layers.Dense(
        ATTENTION_UNITS, activation="tanh", kernel_initializer=glorot(), name="attention_hidden"
    )(h)
    scores = keras.layers.Dense(1, kernel_initializer=glorot(), name="attention_score")(scores)
    weights = keras.layers.Softmax(axis=1, name="attention_weights")(scores)
    context = keras.layers.Dot(axes=1, name="attention_context")([weights, h])  # (B, 1, hidden)
    context = keras.layers.Flatten(name="context")(context)

    z = keras.layers.Dense(latent_units, kernel_initializer=glorot(), name="latent")(context)
    x = keras.layers.RepeatVector(window, name="repeat")(z)
    x = unrolled_lstm(hidden, "decoder", seeds, sequences=True)(x)
    outputs = keras.layers.Dense(channels, kernel_initializer=glorot(), name="reconstruction")(x)
    model = keras.Model(inputs, outputs, name=f"{KIND}_autoencoder")
    compile_autoencoder(model)
    return model
