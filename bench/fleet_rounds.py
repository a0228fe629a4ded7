"""Federated rounds for the fleet-learning benchmarks, offline, with the real parts.

Shared by ``bench/fleet_learning.py`` (the simulated non-IID fleet) and ``bench/fleet_skab.py``
(SKAB's files as a fleet). A round is what the gateways and the desk do, minus the broker:

* each gateway: the daemon's own round, ``edge_agent.learn.train_round.run_round`` for a round
  announcement (``train_local`` from the global weights on its own normal windows, the update
  plus its residual sparsified by ``error_feedback``, ``encode_delta`` signed with its own
  Ed25519 key); with ``fraction=None`` the update of ``train_local`` goes to the desk as fp32
  (the uncompressed reference: no top-k, no int8, no envelope);
* the desk: ``trainer federate``'s own ``tally`` (``decode_delta``: signature, base, round,
  size, norm bound; norm clipping over the round's accepted norms, both passes; the rule of
  ``FederateSettings``) and its server optimizer (``server_step``), in memory: the round's
  global weights stand in the base run, and no run is written each round (Keras save and
  threshold recalibration: ``fleet_learning.py`` does that once at the end, and checks against
  ``trainer.federate.round.run_round`` writing every round's run that the weights agree).

A faulty or malicious gateway (:class:`Attack`) replaces its update before compression: x100,
sign-flipped, or Gaussian noise; it signs with its own registered key, so only the desk's
norm bound, clipping and aggregation rule stand between it and the global model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.bundle.manifest import Manifest
from edge_agent.learn.delta import encode_delta
from edge_agent.learn.local import LocalTrainingConfig, train_local
from edge_agent.learn.residual import error_feedback
from edge_agent.learn.rounds import RoundAnnouncement
from edge_agent.learn.train_round import Budget, run_round, training_config
from edge_agent.learn.weights import WeightSet
from trainer.federate.clip import NormClip
from trainer.federate.collect import DeltaSource
from trainer.federate.round import tally
from trainer.federate.rules import make_aggregator
from trainer.federate.run_out import BaseRun
from trainer.federate.server_opt import ServerState, server_step
from trainer.federate.settings import FederateSettings

FP32_BYTES = 4
SCALED_FACTOR = 100.0  # the "scaled" attack multiplies the honest update by this
RANDOM_RMS_FACTOR = 10.0  # the "random" attack's noise RMS, in units of the honest update's
# Fixed creation time in every header: the bench's deltas are then byte-for-byte repeatable.
CREATED_AT = "2026-01-01T00:00:00Z"
DEADLINE = "2026-01-02T00:00:00Z"
MIN_WINDOWS = 1

AttackKind = Literal["scaled", "sign_flip", "random"]


@dataclass(frozen=True)
class Client:
    """One gateway: its id, its normal windows (normalized as the device does) and its key."""

    machine_id: str
    windows: np.ndarray  # (N, W, C) float32
    key: Ed25519PrivateKey


@dataclass(frozen=True)
class Attack:
    """One gateway sends a bad update every round instead of its honest one."""

    kind: AttackKind
    machine_id: str
    seed: int = 0

    def apply(self, update: np.ndarray, round_index: int) -> np.ndarray:
        if self.kind == "scaled":
            return (update * np.float32(SCALED_FACTOR)).astype(np.float32)
        if self.kind == "sign_flip":
            return (-update).astype(np.float32)
        rms = float(np.sqrt(np.mean(np.square(update, dtype=np.float64))))
        rng = np.random.default_rng([self.seed, round_index])
        noise = rng.standard_normal(update.size) * RANDOM_RMS_FACTOR * max(rms, 1e-8)
        return noise.astype(np.float32)


@dataclass(frozen=True)
class FleetSettings:
    """How the fleet learns: rounds, local training, compression and the desk's rule."""

    rounds: int
    local: LocalTrainingConfig
    fraction: float | None  # top-k fraction; None: uncompressed fp32 updates
    desk: FederateSettings  # its round_id is replaced by "r<i>" every round

    def announcement(
        self, round_id: str, glob: WeightSet, model_version: str, seed: int
    ) -> RoundAnnouncement:
        """What the desk would announce for this round (signature not needed offline)."""
        return RoundAnnouncement(
            round_id=round_id,
            base_model_version=model_version,
            base_fingerprint=glob.fingerprint(),
            epochs=self.local.epochs,
            batch_size=self.local.batch_size,
            learning_rate=self.local.learning_rate,
            prox_mu=self.local.prox_mu,
            topk_fraction=self.fraction or 1.0,
            min_windows=MIN_WINDOWS,
            seed=seed,
            issued_at=CREATED_AT,
            deadline=DEADLINE,
        )

    @property
    def budget(self) -> Budget:
        return Budget(max_cpu_s=self.local.max_cpu_s, max_windows=self.local.max_windows)


@dataclass
class RoundLog:
    """What one round did: bytes, norms, clipping, refusals, loss and CPU per client."""

    round_id: str
    bytes: dict[str, int] = field(default_factory=dict)
    norms: dict[str, float] = field(default_factory=dict)
    clip_scale: dict[str, float] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # machine -> DeltaError reason
    clip_bound: float | None = None
    loss_first: dict[str, float] = field(default_factory=dict)
    loss_last: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    step_norm: float = 0.0


@dataclass
class Sent:
    """What one gateway sent in a round: the signed delta, or the fp32 update."""

    machine_id: str
    samples: int
    payload: bytes | None = None
    vector: np.ndarray | None = None


@dataclass
class Federation:
    """The global weights after every round, and the logs."""

    weights: list[WeightSet]  # index 0 is the initial global model
    logs: list[RoundLog]
    sent: list[list[Sent]]  # per round, what every gateway sent


@dataclass
class Gateways:
    """The fleet's side across rounds: clients and their error-feedback residuals."""

    manifest: Manifest  # with the learning section of the global model
    clients: Sequence[Client]
    settings: FleetSettings
    attack: Attack | None = None
    residuals: dict[str, np.ndarray | None] = field(default_factory=dict)

    def round(self, r: int, glob: WeightSet, log: RoundLog) -> list[Sent]:
        """Every gateway's answer to round ``r`` against the global weights ``glob``."""
        learning = self.manifest.learning
        if learning is None or not learning.trainable:
            raise ValueError("the global model is not trainable on the device")
        settings = self.settings
        version = f"{self.manifest.model_version}-r{r}"
        manifest = self.manifest.model_copy(update={"model_version": version})
        ann = settings.announcement(log.round_id, glob, version, settings.local.seed + r)
        sizes = tuple(int(a.size) for a in glob.arrays)
        out: list[Sent] = []
        for client in self.clients:
            machine = client.machine_id
            residual = self.residuals.get(machine)
            honest = self.attack is None or self.attack.machine_id != machine
            if honest and settings.fraction is not None:
                done = run_round(
                    manifest,
                    glob,
                    client.windows,
                    ann,
                    settings.budget,
                    machine_id=machine,
                    key=client.key,
                    residual=residual,
                    created_at=CREATED_AT,
                )
                self.residuals[machine] = done.residual
                sent = Sent(machine, done.local.samples, payload=done.payload)
                res = done.local
            else:
                cfg = training_config(ann, settings.budget)
                res = train_local(glob, client.windows, cfg, learning.layers)
                update = res.weights.subtract(glob).flat()
                if not honest and self.attack is not None:
                    update = self.attack.apply(update, r)
                if settings.fraction is None:
                    sent = Sent(machine, res.samples, vector=update)
                else:  # the faulty gateway's own code path, same format and key
                    step = error_feedback(update, residual, sizes, settings.fraction)
                    self.residuals[machine] = step.residual
                    payload = encode_delta(
                        step.sparse,
                        base=glob,
                        machine_id=machine,
                        model_version=version,
                        round_id=log.round_id,
                        samples=res.samples,
                        epochs=max(1, res.epochs_run),
                        key=client.key,
                        created_at=CREATED_AT,
                    )
                    sent = Sent(machine, res.samples, payload=payload)
            log.loss_first[machine] = res.loss_first
            log.loss_last[machine] = res.loss_last
            log.cpu_s[machine] = res.cpu_s
            log.bytes[machine] = (
                len(sent.payload) if sent.payload is not None else res.weights.size * FP32_BYTES
            )
            out.append(sent)
        return out


def desk_round(
    base: BaseRun,
    sent: Sequence[Sent],
    keys: Mapping[str, Ed25519PublicKey],
    desk: FederateSettings,
    state: ServerState,
    log: RoundLog,
) -> tuple[WeightSet, ServerState]:
    """The desk's round in memory: ``trainer.federate.round.tally`` (verify, clip, aggregate)
    over the signed deltas, then the server step. ``base.weights`` are the round's global
    weights. fp32 updates (no envelope) are clipped and aggregated with the same parts."""
    if all(s.payload is not None for s in sent):
        sources = [DeltaSource(s.machine_id, _reader(s.payload)) for s in sent]
        counted = tally(base, sources, keys, desk)
        for c in counted.clients:
            name = c.machine or c.source
            if c.status == "accepted":
                log.norms[name] = float(c.norm or 0.0)
                log.clip_scale[name] = float(c.clip_scale if c.clip_scale is not None else 1.0)
            else:
                log.refused[name] = str(c.reason)
        log.clip_bound = counted.clip_bounds[0] if counted.clip_bounds else None
        agg = counted.aggregator
    else:
        clip = NormClip.from_settings(desk)
        vectors = [(s, np.asarray(s.vector, np.float32)) for s in sent]
        for s, v in vectors:
            log.norms[s.machine_id] = float(np.linalg.norm(v.astype(np.float64)))
            clip.observe(log.norms[s.machine_id])
        log.clip_bound = clip.bound()
        agg = make_aggregator(desk, base.weights.size)
        for s, v in vectors:
            c = clip.clip(v)
            log.clip_scale[s.machine_id] = c.scale
            agg.add(c.vector, s.samples)
    base_flat = base.weights.flat()
    new_flat, state = server_step(base_flat, agg.result(), state, desk)
    log.step_norm = float(np.linalg.norm(new_flat.astype(np.float64) - base_flat))
    return WeightSet.from_flat(base.weights, new_flat), state


def _reader(payload: bytes | None) -> Callable[[], bytes]:
    data = bytes(payload or b"")
    return lambda: data


def run_federation(
    base: BaseRun,
    manifest: Manifest,
    clients: Sequence[Client],
    settings: FleetSettings,
    *,
    attack: Attack | None = None,
) -> Federation:
    """``settings.rounds`` rounds from ``base.weights``; see the module docstring."""
    keys = {c.machine_id: c.key.public_key() for c in clients}
    gateways = Gateways(manifest, clients, settings, attack)
    state = ServerState.fresh(settings.desk.server_opt, base.weights.size)
    weights = [base.weights]
    logs: list[RoundLog] = []
    sent_all: list[list[Sent]] = []
    for r in range(settings.rounds):
        desk = settings.desk.model_copy(update={"round_id": f"r{r}"})
        log = RoundLog(desk.round_id)
        sent = gateways.round(r, weights[-1], log)
        glob, state = desk_round(
            dataclasses.replace(base, weights=weights[-1]), sent, keys, desk, state, log
        )
        weights.append(glob)
        logs.append(log)
        sent_all.append(sent)
    return Federation(weights, logs, sent_all)


def fresh_keys(machine_ids: Sequence[str]) -> dict[str, Ed25519PrivateKey]:
    """One new Ed25519 key per gateway (as ``edge_agent.learn.device_key`` creates at install)."""
    return {m: Ed25519PrivateKey.generate() for m in machine_ids}
