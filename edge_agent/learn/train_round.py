"""One local round from buffered windows to the signed delta: the code the gateway and its
offline twin share.

Pipeline position: fleet learning, after the buffer (``edge_agent.learn.buffer``) and before
the outbox. The daemon's learner (``edge_agent.learn.learner``) runs it in its own thread,
the training itself in a child process (``edge_agent.learn.isolated``); ``python -m
edge_agent adapt`` runs it on a history file, all in one process. Same windows, round and
settings in, the same bytes out: training is seeded (``edge_agent.learn.local``), Ed25519
signatures are deterministic, and ``created_at`` is an input, not the clock.

Steps: train from the global weights plus the residual carried from the last round (where
this gateway's own deltas would have left the model had they been sent whole), take the
difference to that start, add the residual and keep the top-k, quantized
(``edge_agent.learn.residual.error_feedback``), then frame and sign
(``edge_agent.learn.delta.encode_delta``). The delta is thus ``local - global`` as before; only
the start moves. Starting from the global weights instead counts the unsent part twice: the
next round's training measures the same gap again *and* the residual adds it, so the residual
winds up round after round (see ``docs/fleet-learning.md``, "Error feedback"). The caller
stores the new residual once the delta is safely in the outbox. With local privacy
(``[learn.privacy]`` or the announcement's ``privacy``), the trained update is clipped and
noised before the residual is added (``edge_agent.learn.privacy``); then, and only then, the
bytes are not repeatable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.bundle.manifest import Manifest
from edge_agent.learn.delta import encode_delta
from edge_agent.learn.local import LocalResult, LocalTrainingConfig, train_dense
from edge_agent.learn.privacy import device_rng, effective, privatize
from edge_agent.learn.privacy_config import DevicePrivacy
from edge_agent.learn.residual import error_feedback
from edge_agent.learn.rounds import RoundAnnouncement
from edge_agent.learn.weights import WeightSet

F32 = npt.NDArray[np.float32]
# Trains start weights on windows with these settings and layer activations: ``train_dense``
# in this process, or the agent's ``edge_agent.learn.isolated.train_in_child``.
LocalTrainer = Callable[[WeightSet, F32, LocalTrainingConfig, Sequence[str]], LocalResult]


@dataclass(frozen=True)
class Budget:
    """What a gateway allows one round, whatever the round asks."""

    max_cpu_s: float
    max_windows: int


@dataclass(frozen=True)
class RoundOutput:
    """A finished local round: the envelope to send and what to keep for the next one."""

    payload: bytes
    residual: F32  # the new error-feedback residual (store it once the payload is queued)
    local: LocalResult
    k: int  # entries sent
    norm: float  # L2 norm of what was sent
    privacy: DevicePrivacy | None = None  # the local DP applied (None: none)


def training_config(announcement: RoundAnnouncement, budget: Budget) -> LocalTrainingConfig:
    return LocalTrainingConfig(
        epochs=announcement.epochs, batch_size=announcement.batch_size,
        learning_rate=announcement.learning_rate, prox_mu=announcement.prox_mu,
        seed=announcement.seed, max_cpu_s=budget.max_cpu_s, max_windows=budget.max_windows,
    )


def training_start(global_weights: WeightSet, residual: F32 | None) -> WeightSet:
    """Where local training starts: the global weights plus the carried residual."""
    if residual is None:
        return global_weights
    if residual.shape != (global_weights.size,):
        raise ValueError(
            f"residual of shape {residual.shape} for a model of {global_weights.size} parameters"
        )
    return WeightSet.from_flat(global_weights, global_weights.flat() + residual)


def run_round(
    manifest: Manifest, global_weights: WeightSet, windows: F32,
    announcement: RoundAnnouncement, budget: Budget, *, machine_id: str,
    key: Ed25519PrivateKey, residual: F32 | None, created_at: str,
    privacy: DevicePrivacy | None = None, rng: np.random.Generator | None = None,
    train: LocalTrainer = train_dense,
) -> RoundOutput:
    """Train on ``windows`` and make the signed delta for ``announcement``.

    ``privacy``: this gateway's own local DP (``LocalPrivacyConfig.required()``); the stricter
    of it and ``announcement.privacy`` is applied, with noise from ``rng`` (default: seeded
    from ``os.urandom``). ``train`` does the training (default: in this process).
    ``ValueError`` when the model is not trainable here or training fails (diverges)."""
    learning = manifest.learning
    if learning is None or not learning.trainable:
        why = "no learning section" if learning is None else learning.reason or "not trainable"
        raise ValueError(f"model {manifest.model_version} is not trainable on the device: {why}")
    start = training_start(global_weights, residual)
    activations = [layer.activation for layer in learning.layers]
    local = train(start, windows, training_config(announcement, budget), activations)
    update = local.weights.subtract(start).flat()
    dp = effective(privacy, announcement.privacy)
    if dp is not None:  # before error feedback: the residual only ever holds noised values
        update = privatize(update, dp, rng if rng is not None else device_rng()).vector
    sizes = tuple(int(a.size) for a in global_weights.arrays)
    step = error_feedback(update, residual, sizes, announcement.topk_fraction)
    payload = encode_delta(
        step.sparse, base=global_weights, machine_id=machine_id,
        model_version=manifest.model_version, round_id=announcement.round_id,
        samples=local.samples, epochs=max(1, local.epochs_run), key=key, created_at=created_at,
    )
    return RoundOutput(payload, step.residual, local, step.sparse.k, step.sparse.l2_norm(), dp)
