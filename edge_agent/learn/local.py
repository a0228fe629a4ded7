"""One local fleet-learning round on the gateway: E epochs of Adam over its normal windows.

Pipeline position: fleet learning (issue 11), between the buffer of windows the device judged
normal and the delta (``edge_agent.learn.delta``): ``train_local`` starts from the global
weights of the active bundle (``edge_agent.learn.bundle_weights``) and returns the trained
weights, whose difference to the start is compressed and sent upstream. The windows are the
normalized ``(N, W, C)`` windows the int8 autoencoder scores (``edge_agent.learn.history``
makes them from rows with the pipeline's own code).

Bounded and deterministic: at most ``max_windows`` windows (a seeded subsample), shuffled
each epoch with ``np.random.default_rng(seed)``, so a seed gives bit-identical weights; the
round stops before the first step after ``max_cpu_s`` CPU seconds of the calling thread (the
agent runs it in a process of its own, ``edge_agent.learn.isolated``, so polling threads are
neither counted against it nor kept waiting by it).

BLAS runs single-threaded during the round: worker threads of a threaded BLAS would escape
that per-thread budget (measured: process CPU 2-3x the thread's), would compete with polling
for the gateway's few cores, and are slower for these small matrices anyway (one epoch over
2,000 windows of 32 x 8: 0.017 CPU s on one thread, 0.09-0.5 s across OpenBLAS's threads on a
2-core x86-64). ``threadpoolctl`` does it where installed (the desk's stack has it); on a
gateway without it, the service sets ``OPENBLAS_NUM_THREADS=1`` (or the BLAS's equivalent).

Only the ``dense`` kind is trainable on the device (see ``edge_agent.learn.dense`` for why
numpy and not the TFLite training signatures); other kinds ship no training weights.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from pydantic import Field

from edge_agent.config.strict import StrictModel
from edge_agent.learn.dense import AdamSettings, AdamState, DenseAutoencoder, train_step
from edge_agent.learn.weights import WeightSet

if TYPE_CHECKING:  # the training process imports this module: no manifest, no kernels
    from edge_agent.bundle.manifest import LearningLayerSpec

WINDOW_RANK = 3  # (windows, time steps, channels)
DEFAULT_EPOCHS = 2
DEFAULT_BATCH_SIZE = 32  # Keras's default batch size, as the trainer's fit uses
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_MAX_CPU_S = 60.0
DEFAULT_MAX_WINDOWS = 5_000  # 5,000 x 32 x 8 float32 = 5 MB of windows


class LocalTrainingConfig(StrictModel):
    """Settings of one local round; a round announcement may carry its own."""

    epochs: int = Field(default=DEFAULT_EPOCHS, ge=1, description="Local epochs E over the windows")
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, description="Windows per Adam step")
    learning_rate: float = Field(
        default=DEFAULT_LEARNING_RATE, gt=0, description="Adam learning rate (Keras 3 Adam)"
    )
    prox_mu: float = Field(
        default=0.0,
        ge=0,
        description="FedProx proximal weight mu in mu/2*||w - w_global||^2; 0 = plain FedAvg",
    )
    seed: int = Field(default=0, ge=0, description="Seeds the subsample and the epoch shuffles")
    max_cpu_s: float = Field(
        default=DEFAULT_MAX_CPU_S,
        gt=0,
        description="CPU seconds of the training thread after which the round stops early",
    )
    max_windows: int = Field(
        default=DEFAULT_MAX_WINDOWS, ge=1, description="Windows trained on at most (subsampled)"
    )


@dataclass(frozen=True)
class LocalResult:
    """What a local round produced; the losses are Keras-style epoch means of batch MSEs."""

    weights: WeightSet  # the trained weights
    samples: int  # windows trained on (after subsampling): FedAvg's weight
    epochs_run: int  # epochs started (the last may be partial when stopped by the budget)
    steps: int  # Adam steps taken
    loss_first: float  # mean batch loss of the first epoch
    loss_last: float  # mean batch loss of the last epoch run
    cpu_s: float  # CPU seconds of the calling thread spent in the round
    stopped_by_budget: bool  # True when max_cpu_s ended the round before E epochs
    # Peak resident memory of the process that trained (MiB), where it was a process of its
    # own (edge_agent.learn.isolated); None when trained inside the caller's process.
    peak_rss_mib: float | None = None


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """BLAS limited to one thread for the duration, where ``threadpoolctl`` is installed."""
    try:  # no type stubs: imported by name
        threadpoolctl = importlib.import_module("threadpoolctl")
    except ImportError:  # the gateway's minimal install: the service's environment decides
        yield
        return
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        yield


def _checked_windows(windows: npt.ArrayLike, input_size: int) -> npt.NDArray[np.float32]:
    x = np.asarray(windows, dtype=np.float32)
    if x.ndim != WINDOW_RANK or x.shape[0] < 1 or x.shape[1] * x.shape[2] != input_size:
        raise ValueError(
            f"local training: expected normalized windows (N >= 1, W, C) with W*C = "
            f"{input_size}, got shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise ValueError("local training: windows contain NaN or infinite values")
    return x


def train_local(
    global_weights: WeightSet,
    windows: npt.ArrayLike,
    cfg: LocalTrainingConfig,
    layers: Sequence[LearningLayerSpec],
) -> LocalResult:
    """Train ``global_weights`` (the manifest's ``learning.layers``) on ``windows``.

    ``ValueError`` when the windows do not fit the model, contain non-finite values, or the
    weights do not chain into the layers. Training that diverges to non-finite weights raises
    ``ValueError`` too (from ``WeightSet``); the caller reports the round as failed.
    """
    return train_dense(global_weights, windows, cfg, [layer.activation for layer in layers])


def train_dense(
    global_weights: WeightSet,
    windows: npt.ArrayLike,
    cfg: LocalTrainingConfig,
    activations: Sequence[str],
) -> LocalResult:
    """:func:`train_local` given the layers' activation names (what the agent's training
    process receives: plain data, so it never imports the manifest or the kernels)."""
    with _single_threaded_blas():
        return _train(global_weights, windows, cfg, activations)


def _train(
    global_weights: WeightSet,
    windows: npt.ArrayLike,
    cfg: LocalTrainingConfig,
    activations: Sequence[str],
) -> LocalResult:
    start_cpu = time.thread_time()
    model = DenseAutoencoder(global_weights, list(activations))
    x = _checked_windows(windows, model.input_size)
    rng = np.random.default_rng(cfg.seed)
    if x.shape[0] > cfg.max_windows:
        x = x[np.sort(rng.choice(x.shape[0], cfg.max_windows, replace=False))]
    n = int(x.shape[0])
    state = AdamState.zeros(model.params)
    settings = AdamSettings(learning_rate=cfg.learning_rate)
    anchor = global_weights if cfg.prox_mu > 0 else None
    epoch_losses: list[float] = []
    epochs_run = 0
    stopped = False
    for _ in range(cfg.epochs):
        order = rng.permutation(n)
        batch_losses: list[float] = []
        for begin in range(0, n, cfg.batch_size):
            # Checked before each step but the first: a round always makes progress, and
            # "stopped" means steps were left undone.
            if state.iterations and time.thread_time() - start_cpu > cfg.max_cpu_s:
                stopped = True
                break
            batch = x[order[begin : begin + cfg.batch_size]]
            step = train_step(model, batch, state, settings, prox_mu=cfg.prox_mu, anchor=anchor)
            batch_losses.append(step.loss)
        if batch_losses:
            epochs_run += 1
            epoch_losses.append(float(np.mean(batch_losses)))
        if stopped:
            break
    return LocalResult(
        weights=model.weights(),
        samples=n,
        epochs_run=epochs_run,
        steps=state.iterations,
        loss_first=epoch_losses[0],
        loss_last=epoch_losses[-1],
        cpu_s=time.thread_time() - start_cpu,
        stopped_by_budget=stopped,
    )
