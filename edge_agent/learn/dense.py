"""The ``dense`` autoencoder kind in numpy: forward, MSE, backward and Keras 3's Adam step.

Pipeline position: fleet learning on the gateway (issue 11). ``edge_agent.learn.local`` trains
the float weights a bundle ships (``train_weights.npz``) on the gateway's own normal windows
with these functions; the int8 TFLite model keeps scoring meanwhile, untouched.

The network is ``trainer.models.dense``: Flatten -> Dense(relu) -> ... -> Dense(linear) ->
Reshape, read from the weights' shapes (kernel ``(in, out)``, bias ``(out,)`` pairs in Keras
``model.weights`` order) and the manifest's ``learning.layers`` activations; no size is fixed
here. The loss is Keras's ``"mse"`` as ``compile`` uses it: the squared error averaged over
channels, then over windows and time steps, i.e. over every element. The Adam step is Keras
3's (``keras/src/optimizers/adam.py``): epsilon 1e-7 added to ``sqrt(v)``, bias correction
folded into the step size ``lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)``, every value float32.
FedProx's proximal term ``mu/2 * ||w - w_global||^2`` adds ``mu * (w - w_global)`` to the
gradients.

Why numpy rather than the TFLite runtime's on-device training signatures: it is simpler (no
Flex ops, no fixed-batch train signature, no second model file to convert, sign and ship, no
custom ReLU gradient) and exact (``tests/edge_agent/learn/test_dense_step.py`` shows one and
five steps equal TensorFlow's within 1e-5). Only ``dense`` is trainable on the device: the
``conv`` and ``lstm`` kinds would need convolution and recurrent backward passes written by
hand; their bundles say ``learning.trainable = false`` and gateways skip training rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.learn.weights import WeightSet

F32 = npt.NDArray[np.float32]

ACTIVATIONS = ("relu", "linear")
# Keras 3 Adam defaults (keras/src/optimizers/adam.py); the trainer uses them too.
KERAS_ADAM_BETA_1 = 0.9
KERAS_ADAM_BETA_2 = 0.999
KERAS_ADAM_EPSILON = 1e-7
WINDOW_RANK = 3  # (windows, time steps, channels)
KERNEL_RANK = 2  # (inputs, units)


@dataclass(frozen=True)
class AdamSettings:
    """Adam's hyper-parameters, Keras 3 defaults except the learning rate."""

    learning_rate: float
    beta_1: float = KERAS_ADAM_BETA_1
    beta_2: float = KERAS_ADAM_BETA_2
    epsilon: float = KERAS_ADAM_EPSILON


@dataclass
class AdamState:
    """Adam's moments per tensor and the steps taken (Keras ``optimizer.iterations``)."""

    iterations: int
    momentums: list[F32]
    velocities: list[F32]

    @classmethod
    def zeros(cls, params: Sequence[F32]) -> AdamState:
        return cls(0, [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params])


@dataclass(frozen=True)
class StepResult:
    """One training step's batch loss, both measured before the update (as Keras reports)."""

    loss: float  # the MSE on the batch
    prox: float  # mu/2 * ||w - w_global||^2, 0 without a proximal term


class DenseAutoencoder:
    """Writable float32 parameters of a dense autoencoder with their activations."""

    def __init__(self, weights: WeightSet, activations: Sequence[str]) -> None:
        shapes = weights.shapes
        if len(shapes) % 2 or len(shapes) // 2 != len(activations):
            raise ValueError(
                f"dense weights: {len(shapes)} tensors for {len(activations)} layers; "
                "expected a kernel and a bias per layer"
            )
        width = None
        for i, act in enumerate(activations):
            kname, bname = weights.names[2 * i], weights.names[2 * i + 1]
            kernel, bias = shapes[2 * i], shapes[2 * i + 1]
            if act not in ACTIVATIONS:
                raise ValueError(f"dense layer {i}: activation {act!r}; known {ACTIVATIONS}")
            if len(kernel) != KERNEL_RANK or bias != (kernel[1],):
                raise ValueError(
                    f"dense layer {i}: {kname!r} {kernel} and {bname!r} {bias} are not a "
                    "kernel (in, out) and its bias (out,)"
                )
            if width is not None and kernel[0] != width:
                raise ValueError(
                    f"dense layer {i}: {kname!r} takes {kernel[0]} inputs, "
                    f"the layer before gives {width}"
                )
            width = kernel[1]
        if width != shapes[0][0]:
            raise ValueError(
                f"dense weights: output width {width} differs from the input "
                f"width {shapes[0][0]}; not an autoencoder"
            )
        self.names = weights.names
        self.activations = tuple(activations)
        self.params: list[F32] = [np.array(a, dtype=np.float32) for a in weights.arrays]

    @property
    def input_size(self) -> int:
        """Values per window (W * C)."""
        return int(self.params[0].shape[0])

    def weights(self) -> WeightSet:
        """The current parameters as an immutable weight set (a copy)."""
        return WeightSet(self.names, tuple(self.params))

    def _flat(self, windows: npt.ArrayLike) -> F32:
        x = np.asarray(windows, dtype=np.float32)
        if x.ndim != WINDOW_RANK or x.shape[1] * x.shape[2] != self.input_size:
            raise ValueError(
                f"expected windows (n, W, C) with W*C = {self.input_size}, got shape {x.shape}"
            )
        return np.ascontiguousarray(x.reshape(x.shape[0], -1))

    def _forward(self, x: F32) -> list[F32]:
        """Activations of every layer, input first."""
        outs = [x]
        for i, act in enumerate(self.activations):
            z = outs[-1] @ self.params[2 * i] + self.params[2 * i + 1]
            outs.append(np.maximum(z, np.float32(0)) if act == "relu" else z)
        return outs

    def reconstruct(self, windows: npt.ArrayLike) -> F32:
        """Float32 reconstruction of ``(n, W, C)`` windows, same shape."""
        x = np.asarray(windows, dtype=np.float32)
        return self._forward(self._flat(x))[-1].reshape(x.shape)

    def loss(self, windows: npt.ArrayLike) -> float:
        """Keras ``"mse"`` over ``windows``: mean squared error over every element."""
        x = self._flat(windows)
        return _mse(x, self._forward(x)[-1])

    def gradients(self, windows: npt.ArrayLike) -> tuple[float, list[F32]]:
        """The batch MSE and its gradient with respect to every parameter, in order."""
        x = self._flat(windows)
        outs = self._forward(x)
        grad = (outs[-1] - x) * np.float32(2.0 / x.size)
        grads: list[F32] = [np.empty(0, np.float32)] * len(self.params)
        for i in reversed(range(len(self.activations))):
            if self.activations[i] == "relu":
                grad = grad * (outs[i + 1] > 0)
            grads[2 * i] = outs[i].T @ grad
            grads[2 * i + 1] = grad.sum(axis=0)
            if i:
                grad = grad @ self.params[2 * i].T
        return _mse(x, outs[-1]), grads


def _mse(x: F32, y: F32) -> float:
    return float(np.mean(np.square(x - y), dtype=np.float64))


def adam_update(
    params: list[F32], grads: Sequence[F32], state: AdamState, settings: AdamSettings
) -> None:
    """One Keras 3 Adam step on ``params`` in place, in float32 (``adam.py: update_step``)."""
    f32 = np.float32
    step = f32(state.iterations + 1)
    beta_1, beta_2 = f32(settings.beta_1), f32(settings.beta_2)
    alpha = f32(settings.learning_rate) * np.sqrt(f32(1) - beta_2**step) / (f32(1) - beta_1**step)
    one_minus_b1, one_minus_b2 = f32(1 - settings.beta_1), f32(1 - settings.beta_2)
    eps = f32(settings.epsilon)
    for p, g, m, v in zip(params, grads, state.momentums, state.velocities, strict=True):
        # In place (``out=``): the moments and parameters live on in the caller's lists.
        np.add(m, (g - m) * one_minus_b1, out=m)
        np.add(v, (np.square(g) - v) * one_minus_b2, out=v)
        np.subtract(p, (m * alpha) / (np.sqrt(v) + eps), out=p)
    state.iterations += 1


def train_step(
    model: DenseAutoencoder,
    batch: npt.ArrayLike,
    state: AdamState,
    settings: AdamSettings,
    *,
    prox_mu: float = 0.0,
    anchor: WeightSet | None = None,
) -> StepResult:
    """Gradients on ``batch``, plus FedProx's ``mu * (w - anchor)`` when ``prox_mu > 0``,
    then one Adam update of ``model.params``. ``anchor`` is the global weights the round
    started from (required when ``prox_mu > 0``)."""
    if prox_mu < 0:
        raise ValueError(f"prox_mu must be >= 0, got {prox_mu}")
    loss, grads = model.gradients(batch)
    prox = 0.0
    if prox_mu > 0:
        if anchor is None:
            raise ValueError("prox_mu > 0 needs the global weights as anchor")
        if anchor.names != model.names or anchor.shapes != tuple(p.shape for p in model.params):
            raise ValueError("anchor weights differ from the model's tensors (names or shapes)")
        mu = np.float32(prox_mu)
        square_sum = 0.0
        for i, (p, g) in enumerate(zip(model.params, anchor.arrays, strict=True)):
            diff = p - g
            square_sum += float(np.dot(diff.ravel(), diff.ravel()).astype(np.float64))
            grads[i] = grads[i] + mu * diff
        prox = 0.5 * prox_mu * square_sum
    adam_update(model.params, grads, state, settings)
    return StepResult(loss=loss, prox=prox)
