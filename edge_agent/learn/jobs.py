"""Deciding whether and how this gateway answers a round, and doing it.

Pipeline position: fleet learning, inside the learner's thread (``edge_agent.learn.learner``),
between the opened announcement and the outbox. :meth:`RoundJob.run` either raises
:class:`Skip` (with a reason code, and whether the round is refused for good or may be
answered later) or returns the signed delta made by ``edge_agent.learn.train_round``.

In order: the round must be for the model that runs now and not past its deadline; the
model must be trainable on the device (its bundle's ``learning`` section and
``train_weights.npz``, read from the verified bundle in memory); the announcement's weights
fingerprint must be those weights'; the buffer must hold ``min_windows`` normal windows.
The training itself runs where the job's ``train`` says: the agent's learner gives it a child
process at nice 19 (``edge_agent.learn.isolated``).
"""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.learn.buffer import NormalBuffer
from edge_agent.learn.bundle_weights import train_weights_from_bytes
from edge_agent.learn.config import LearnConfig
from edge_agent.learn.local import train_dense
from edge_agent.learn.residual import ResidualStore
from edge_agent.learn.rounds import RoundAnnouncement, RoundError, check_round, iso_utc
from edge_agent.learn.train_round import F32, Budget, LocalTrainer, RoundOutput, run_round
from edge_agent.learn.weights import WeightSet
from edge_agent.model_slot import ModelSlot

log = logging.getLogger("edge_agent.learn")

SCHEDULED_PREFIX = "sched-"
class Skip(Exception):
    """The round is not answered now; ``final``: never (refused), else maybe later."""

    def __init__(self, code: str, reason: str, *, final: bool) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.final = final


class RoundJob:
    """One gateway's rounds: its key, buffer and residual, and the running model's weights."""

    def __init__(self, cfg: LearnConfig, machine_id: str, key: Ed25519PrivateKey,
                 buffer: NormalBuffer, residuals: ResidualStore, *,
                 train: LocalTrainer = train_dense) -> None:
        self.cfg = cfg
        self.train = train
        self.machine_id = machine_id
        self.key = key
        self.buffer = buffer
        self.residuals = residuals
        self._weights: tuple[str, WeightSet | None] | None = None  # (bundle digest, weights)
        self._short: tuple[str, int] | None = None  # (round id, chunks) found too few

    def forget(self) -> None:
        """Another model runs: drop the cached weights."""
        self._weights = None

    def weights(self, model: ModelSlot) -> WeightSet | None:
        """The running model's float training weights (None: not trainable here)."""
        cached = self._weights
        if cached is None or cached[0] != model.digest:
            learning = model.manifest.learning
            data = None if learning is None or learning.file is None else (
                model.bundle.files.get(learning.file))
            weights = None if data is None else train_weights_from_bytes(data, model.manifest)
            cached = self._weights = (model.digest, weights)
        return cached[1]

    def scheduled(self, model: ModelSlot, now: float) -> RoundAnnouncement | None:
        """A round of this gateway's own (``every_s``), for the running model."""
        weights = self.weights(model)
        if weights is None:
            return None
        c = self.cfg
        return RoundAnnouncement(
            round_id=f"{SCHEDULED_PREFIX}{iso_utc(now).replace(':', '')}",
            base_model_version=model.version, base_fingerprint=weights.fingerprint(),
            epochs=c.epochs, batch_size=c.batch_size, learning_rate=c.learning_rate,
            prox_mu=c.prox_mu, topk_fraction=c.topk_fraction, min_windows=c.min_windows,
            issued_at=iso_utc(now), deadline=iso_utc(now + (c.every_s or c.max_cpu_s)),
        )

    def run(self, a: RoundAnnouncement, model: ModelSlot, *, now: float) -> RoundOutput:
        """Answer ``a`` with ``model``: the delta, or :class:`Skip`."""
        try:  # expiry and model version first: a round for the next model waits for it
            check_round(a, now=now, model_version=model.version, fingerprint=a.base_fingerprint)
        except RoundError as err:
            raise Skip(err.reason, str(err), final=err.reason == "expired") from None
        try:
            weights = self.weights(model)
        except ValueError as err:
            raise Skip("bad_weights", f"model {model.version}: {err}", final=True) from None
        if weights is None:
            learning = model.manifest.learning
            why = ("its bundle has no learning section (exported before fleet learning)"
                   if learning is None else learning.reason or "not trainable")
            raise Skip("not_trainable", f"model {model.version} ({model.manifest.autoencoder.kind})"
                       f" is not trainable on the device: {why}", final=True)
        try:
            check_round(a, now=now, model_version=model.version, fingerprint=weights.fingerprint())
        except RoundError as err:
            raise Skip(err.reason, str(err), final=True) from None
        windows = self._windows(a, model)
        return run_round(
            model.manifest, weights, windows, a, Budget(self.cfg.max_cpu_s, self.cfg.max_windows),
            machine_id=self.machine_id, key=self.key, residual=self.residuals.load(weights),
            created_at=iso_utc(now), privacy=self.cfg.privacy.required(), train=self.train,
        )

    def keep_residual(self, model: ModelSlot, residual: F32) -> None:
        """Store the residual of a delta that is in the outbox (base: the running weights)."""
        weights = self.weights(model)
        if weights is not None:
            self.residuals.save(weights, residual)

    def _windows(self, a: RoundAnnouncement, model: ModelSlot) -> F32:
        chunks = self.buffer.stats().chunks
        if self._short == (a.round_id, chunks):  # nothing new since it was too few
            raise Skip("too_few_windows", self._too_few(a, -1), final=False)
        windows = self.buffer.windows(model.manifest, self.cfg.max_windows)
        if windows.shape[0] < a.min_windows:
            self._short = (a.round_id, chunks)
            raise Skip("too_few_windows", self._too_few(a, windows.shape[0]), final=False)
        return windows

    @staticmethod
    def _too_few(a: RoundAnnouncement, n: int) -> str:
        held = "too few" if n < 0 else str(n)
        return (f"round {a.round_id} needs {a.min_windows} buffered normal windows, the buffer "
                f"holds {held}; waiting for more until {a.deadline}")
