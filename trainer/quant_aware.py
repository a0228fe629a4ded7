"""Quantization-aware fine-tuning: the last step of ``trainer fit``'s autoencoder training.

``export`` converts the float autoencoder to full-integer int8 (``export.tflite_int8``) and
refuses a model whose int8 copy loses what float finds (``export.parity_gate``). Rounding
costs most where the float model is least sure: the rare windows (a compressor's starts and
stops) that the second training pass learned were reconstructed 3-6 times worse by int8 on
the simulator's day-long seed-31 history, which raised int8's threshold over float's and was
refused. This step trains the float weights a few more epochs through the same rounding the
converter applies (fake quantization with straight-through gradients), so the weights it
hands to export are ones whose int8 copy reconstructs like they do:

- weights: symmetric, per output channel, narrow range (-127..127), as TFLite quantizes a
  FULLY_CONNECTED kernel;
- the input and each layer's output: asymmetric over 256 levels, between the minimum and
  maximum seen on the int8 calibration windows (the converter's own rule for activations),
  taken once from the float model before fine-tuning.

Only the ``dense`` kind is fine-tuned: its forward pass is a chain of Dense layers, which this
module rebuilds with the rounding in place. Other kinds train as before (a note in the log).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from trainer.synthetic import inject

log = logging.getLogger("trainer.quant_aware")

# Bits of an int8 tensor.
INT8_BITS = 8


def int8_calibration_windows(
    representative: npt.NDArray[Any], *, seed: int
) -> npt.NDArray[np.float32]:
    """The windows int8 ranges are calibrated on: the run's representative training windows
    and one synthetic fault made from each (``trainer.synthetic``: spike, level shift, drift,
    stuck, noise). Normal windows alone set input ranges that faults leave: int8 clipped the
    very values that make a fault, and on SKAB valve1/8 missed 11 of 300 faults at the alert
    line that float caught (the parity gate refused it); with the faults in, 3, and the gate
    passes. Ranges widen by about the faults' size, a small loss of resolution on normal.
    ``export`` calibrates the converter on these and fine-tuning takes its ranges from them."""
    normal = np.ascontiguousarray(representative, dtype=np.float32)
    faults, _ = inject(normal, seed=seed, copies=1)
    return np.concatenate([normal, faults])


def dense_chain(model: Any) -> list[Any] | None:
    """The model's Dense layers in order when its forward pass is Flatten, Dense..., Reshape
    and nothing else (the ``dense`` kind); None for any other architecture."""
    import keras

    dense: list[Any] = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            dense.append(layer)
        elif not isinstance(
            layer, keras.layers.InputLayer | keras.layers.Flatten | keras.layers.Reshape
        ):
            return None
    return dense or None


def activation_ranges(
    model: Any, layers: list[Any], calibration: npt.NDArray[np.float32]
) -> list[tuple[float, float]]:
    """(min, max) of the model's input and of each Dense layer's output on ``calibration``,
    widened to hold 0 as the converter does (zero must be exactly representable)."""
    x = calibration.reshape(calibration.shape[0], -1).astype(np.float32)
    ranges = [(min(float(x.min()), 0.0), max(float(x.max()), 0.0))]
    for layer in layers:
        x = np.asarray(layer(x))
        ranges.append((min(float(x.min()), 0.0), max(float(x.max()), 0.0)))
    return ranges


def fine_tune(
    model: Any,
    train_w: npt.NDArray[np.float32],
    val_w: npt.NDArray[np.float32],
    representative: npt.NDArray[np.float32],
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    weights: npt.NDArray[np.float64] | None = None,
    seed: int = 0,
) -> int:
    """Fine-tune ``model`` in place through int8 rounding; returns the epochs run (0 when the
    model is not a dense chain). The activation ranges come from the int8 calibration
    windows export will make of ``representative`` (:func:`int8_calibration_windows`). The
    weights kept are those of the epoch with the lowest validation loss through the rounding,
    the first epoch's starting point included, so the step never hands export a model worse
    under int8 than it was given."""
    if epochs < 1:
        return 0
    layers = dense_chain(model)
    if layers is None:
        log.info("quantization-aware fine-tuning skipped: it applies to the dense kind")
        return 0
    import keras
    import tensorflow as tf

    calibration = int8_calibration_windows(representative, seed=seed)
    ranges = activation_ranges(model, layers, calibration)
    shape = tuple(int(d) for d in train_w.shape[1:])

    def forward(x: Any) -> Any:
        lo, hi = ranges[0]
        h = tf.quantization.fake_quant_with_min_max_args(
            tf.reshape(x, (-1, int(np.prod(shape)))), min=lo, max=hi, num_bits=INT8_BITS
        )
        for layer, (lo, hi) in zip(layers, ranges[1:], strict=True):
            kernel = tf.convert_to_tensor(layer.kernel)
            bound = tf.maximum(tf.reduce_max(tf.abs(kernel), axis=0), 1e-8)
            kernel = tf.quantization.fake_quant_with_min_max_vars_per_channel(
                kernel, -bound, bound, num_bits=INT8_BITS, narrow_range=True
            )
            h = tf.matmul(h, kernel) + tf.convert_to_tensor(layer.bias)
            if layer.activation is not None:
                h = layer.activation(h)
            h = tf.quantization.fake_quant_with_min_max_args(h, min=lo, max=hi, num_bits=INT8_BITS)
        return tf.reshape(h, (-1, *shape))

    variables = [v for layer in layers for v in (layer.kernel, layer.bias)]
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)

    @tf.function
    def step(x: Any, w: Any) -> Any:
        with tf.GradientTape() as tape:
            err = tf.reduce_mean(tf.square(forward(x) - x), axis=(1, 2))
            loss = tf.reduce_sum(err * w) / tf.reduce_sum(w)
        grads = tape.gradient(loss, [v.value for v in variables])
        optimizer.apply(grads, variables)
        return loss

    @tf.function
    def val_error(x: Any) -> Any:
        return tf.reduce_sum(tf.reduce_mean(tf.square(forward(x) - x), axis=(1, 2)))

    def val_loss() -> float:
        total = sum(float(val_error(val_w[i : i + 1024])) for i in range(0, val_w.shape[0], 1024))
        return total / max(val_w.shape[0], 1)

    w_all = np.ones(train_w.shape[0]) if weights is None else np.asarray(weights, np.float64)
    rng = np.random.default_rng(seed)
    best = val_loss()
    best_values = [np.array(v.numpy()) for v in variables]
    start = best
    for _ in range(epochs):
        order = rng.permutation(train_w.shape[0])
        for i in range(0, order.size, batch_size):
            idx = order[i : i + batch_size]
            step(train_w[idx], w_all[idx].astype(np.float32))
        loss = val_loss()
        if loss < best:
            best, best_values = loss, [np.array(v.numpy()) for v in variables]
    for v, value in zip(variables, best_values, strict=True):
        v.assign(value)
    log.info(
        "quantization-aware fine-tuning: %d epochs, validation loss through int8 rounding "
        "%.5f -> %.5f",
        epochs,
        start,
        best,
    )
    return epochs
