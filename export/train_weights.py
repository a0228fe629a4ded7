"""The float weights a gateway trains in fleet learning, and the manifest's ``learning`` section.

Pipeline position: ``export bundle`` (``export.bundle``) calls :func:`learning_files` while it
packs a run; the weights file goes into ``manifest.files`` and is signed like every other
file, so the gateway trusts it only after ``edge_agent.bundle.verify`` has checked it.
``edge_agent.learn.bundle_weights`` reads it back on the device.

Only the ``dense`` kind is trainable on the device (``edge_agent.learn.dense`` trains it in
numpy): ``conv`` and ``lstm`` bundles carry ``learning.trainable = false``, no weights file and
the reason, and gateways skip training rounds for them and report why. A dense model whose
layers are not the plain Dense stack that numpy code reproduces is marked the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_agent.bundle.manifest import LearningLayerSpec, LearningSpec
from edge_agent.learn.dense import ACTIVATIONS, DenseAutoencoder
from edge_agent.learn.weights import WeightSet

TRAIN_WEIGHTS_FILE = "train_weights.npz"
DEVICE_TRAINABLE_KINDS = ("dense",)
# Layers of a dense autoencoder that carry no weights and are plain reshapes for numpy.
_SHAPE_ONLY_LAYERS = ("InputLayer", "Flatten", "Reshape")


def keras_weight_set(model: Any) -> WeightSet:
    """All of ``model.weights`` in Keras order, named by their Keras 3 paths."""
    return WeightSet(
        tuple(str(w.path) for w in model.weights),
        tuple(np.asarray(w.numpy(), dtype=np.float32) for w in model.weights),
    )


def _dense_layers(model: Any) -> tuple[list[LearningLayerSpec], str]:
    """The Dense stack of ``model`` for the device, or ``([], reason)`` when it is not one."""
    layers: list[LearningLayerSpec] = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in _SHAPE_ONLY_LAYERS:
            continue
        if kind != "Dense":
            return [], f"layer {layer.name!r} is a {kind}; the device trains Dense stacks only"
        activation = getattr(layer.activation, "__name__", str(layer.activation))
        if activation not in ACTIVATIONS or not layer.use_bias:
            return [], (
                f"layer {layer.name!r} ({activation}, bias {layer.use_bias}) is not one of "
                f"the device's Dense layers (activations {ACTIVATIONS}, with bias)"
            )
        layers.append(LearningLayerSpec(units=int(layer.units), activation=activation))
    return layers, ""


def learning_files(model: Any, kind: str) -> tuple[LearningSpec, dict[str, bytes]]:
    """The ``learning`` section for a run's float Keras ``model`` of ``kind`` and the files
    to add to the bundle (``train_weights.npz`` when trainable, none otherwise)."""
    if kind not in DEVICE_TRAINABLE_KINDS:
        reason = (
            f"the {kind} kind is not trainable on the device: its backward pass is not "
            f"implemented in numpy (trainable kinds: {', '.join(DEVICE_TRAINABLE_KINDS)})"
        )
        return LearningSpec(kind=kind, trainable=False, reason=reason), {}
    layers, reason = _dense_layers(model)
    weights = keras_weight_set(model)
    if not reason:
        try:  # the device's own check: the tensors chain into an autoencoder
            DenseAutoencoder(weights, [layer.activation for layer in layers])
        except ValueError as exc:
            reason = str(exc)
    if reason:
        return LearningSpec(kind=kind, trainable=False, reason=reason), {}
    spec = LearningSpec(kind=kind, trainable=True, file=TRAIN_WEIGHTS_FILE, layers=layers)
    return spec, {TRAIN_WEIGHTS_FILE: weights.to_npz_bytes()}
