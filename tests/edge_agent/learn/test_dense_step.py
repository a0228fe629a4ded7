"""The numpy dense autoencoder's training step equals TensorFlow's (Keras 3 Adam) within 1e-5.

The Keras model is the trainer's own ``build_dense_autoencoder`` (small W and C); the same
batch goes through ``train_on_batch`` (the trainer's optimizer) or a GradientTape with Keras's
Adam, and through ``edge_agent.learn.dense``, for one and five steps, with and without the
FedProx proximal term.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edge_agent.learn.dense import AdamSettings, AdamState, DenseAutoencoder, train_step
from edge_agent.learn.weights import WeightSet

pytest.importorskip("tensorflow")

WINDOW, CHANNELS, BATCH = 8, 3, 24
LEARNING_RATE = 1e-3
TOLERANCE = 1e-5
ACTIVATIONS = ("relu", "relu", "relu", "linear")


def _keras_model() -> Any:
    from trainer.models.dense import build_dense_autoencoder

    return build_dense_autoencoder(WINDOW, CHANNELS, latent=4, hidden=16, seed=5)


def _keras_weights(model: Any) -> WeightSet:
    return WeightSet(
        tuple(w.path for w in model.weights), tuple(np.asarray(w.numpy()) for w in model.weights)
    )


def _batch(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # A little structure on top of noise, as normalized sensor windows have.
    base = np.sin(np.linspace(0, 3, WINDOW))[None, :, None]
    return (base + 0.5 * rng.standard_normal((BATCH, WINDOW, CHANNELS))).astype(np.float32)


def _max_diff(a: WeightSet, b: WeightSet) -> float:
    a.check_like(b)
    return float(np.max(np.abs(a.flat() - b.flat())))


@pytest.mark.parametrize("steps", [1, 5])
def test_train_on_batch_parity(steps: int) -> None:
    model = _keras_model()
    x = _batch()
    dense = DenseAutoencoder(_keras_weights(model), ACTIVATIONS)
    state = AdamState.zeros(dense.params)
    settings = AdamSettings(learning_rate=LEARNING_RATE)
    keras_loss_first = float(model.train_on_batch(x, x))
    numpy_losses = [train_step(dense, x, state, settings).loss]
    for _ in range(steps - 1):
        model.train_on_batch(x, x)
        numpy_losses.append(train_step(dense, x, state, settings).loss)
    assert abs(numpy_losses[0] - keras_loss_first) <= TOLERANCE
    assert _max_diff(dense.weights(), _keras_weights(model)) <= TOLERANCE
    assert int(model.optimizer.iterations.numpy()) == state.iterations == steps
    # The loss after the steps, as Keras evaluates it.
    keras_after = float(model.evaluate(x, x, batch_size=BATCH, verbose=0))
    assert abs(dense.loss(x) - keras_after) <= TOLERANCE
    assert numpy_losses[-1] < numpy_losses[0] or steps == 1


def _tape_steps(model: Any, x: np.ndarray, steps: int, mu: float, anchor: WeightSet) -> list[float]:
    """``steps`` Keras Adam steps on MSE + mu/2 * ||w - anchor||^2; the MSE of each batch."""
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.Adam(LEARNING_RATE)
    fixed = [tf.constant(a) for a in anchor.arrays]
    mse = keras.losses.MeanSquaredError()
    losses = []
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = mse(x, model(x, training=True))
            prox = tf.add_n(
                [
                    tf.reduce_sum(tf.square(w - a))
                    for w, a in zip(model.trainable_weights, fixed, strict=True)
                ]
            )
            total = loss + 0.5 * mu * prox
        grads = tape.gradient(total, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights, strict=True))
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize(("steps", "mu"), [(1, 0.0), (5, 0.0), (1, 0.5), (5, 0.5), (5, 20.0)])
def test_gradient_tape_parity_with_proximal_term(steps: int, mu: float) -> None:
    model = _keras_model()
    x = _batch(1)
    start = _keras_weights(model)
    # The global weights the round started from differ from the local start (as after a
    # few local steps), so the proximal term and its gradient are not zero.
    rng = np.random.default_rng(7)
    anchor = WeightSet(
        start.names, tuple(a + 0.05 * rng.standard_normal(a.shape) for a in start.arrays)
    )
    dense = DenseAutoencoder(start, ACTIVATIONS)
    state = AdamState.zeros(dense.params)
    settings = AdamSettings(learning_rate=LEARNING_RATE)
    tf_losses = _tape_steps(model, x, steps, mu, anchor)
    results = [
        train_step(dense, x, state, settings, prox_mu=mu, anchor=anchor) for _ in range(steps)
    ]
    assert max(abs(r.loss - t) for r, t in zip(results, tf_losses, strict=True)) <= TOLERANCE
    assert _max_diff(dense.weights(), _keras_weights(model)) <= TOLERANCE
    expected_prox = 0.5 * mu * float(np.sum(np.square(start.flat() - anchor.flat())))
    assert results[0].prox == pytest.approx(expected_prox, rel=1e-5)


def test_forward_equals_keras_predict() -> None:
    model = _keras_model()
    x = _batch(3)
    dense = DenseAutoencoder(_keras_weights(model), ACTIVATIONS)
    expected = model.predict(x, verbose=0)
    assert float(np.max(np.abs(dense.reconstruct(x) - expected))) <= TOLERANCE


def _tiny(shapes: list[tuple[int, ...]]) -> WeightSet:
    names = tuple(
        f"dense_{i // 2}/{'kernel' if i % 2 == 0 else 'bias'}" for i in range(len(shapes))
    )
    return WeightSet(names, tuple(np.zeros(s, np.float32) for s in shapes))


@pytest.mark.parametrize(
    ("shapes", "activations", "message"),
    [
        ([(6, 4), (4,), (4, 6), (6,)], ("relu",), "4 tensors for 1 layers"),
        ([(6, 4), (4,), (4, 6), (6,)], ("relu", "tanh"), "activation 'tanh'"),
        ([(6, 4), (3,), (4, 6), (6,)], ("relu", "linear"), "'dense_0/bias' \\(3,\\)"),
        ([(6, 4), (4,), (5, 6), (6,)], ("relu", "linear"), "takes 5 inputs"),
        ([(6, 4), (4,), (4, 5), (5,)], ("relu", "linear"), "not an autoencoder"),
    ],
)
def test_bad_architectures_are_refused(
    shapes: list[tuple[int, ...]], activations: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        DenseAutoencoder(_tiny(shapes), activations)


def test_windows_of_another_size_and_missing_anchor_are_refused() -> None:
    dense = DenseAutoencoder(_tiny([(6, 4), (4,), (4, 6), (6,)]), ("relu", "linear"))
    with pytest.raises(ValueError, match="W\\*C = 6"):
        dense.loss(np.zeros((2, 4, 2), np.float32))
    state = AdamState.zeros(dense.params)
    with pytest.raises(ValueError, match="needs the global weights"):
        train_step(dense, np.zeros((2, 3, 2), np.float32), state, AdamSettings(1e-3), prox_mu=1.0)
