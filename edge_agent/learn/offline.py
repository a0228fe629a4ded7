"""The offline twins of fleet learning: ``edge_agent adapt`` and ``replay --local-history``.

Pipeline position: the gateway's fleet learning, run on a history file at a desk or in a test.
The file is scored through the device pipeline of the verified bundle (its forest screen, int8
autoencoder, threshold and hysteresis, and the episode tracker), pushed in blocks of
:data:`PUSH_ROWS` rows as a replay source feeds the daemon; the rows the gateway would keep go
through the same selection rule (``edge_agent.learn.select``) into the same buffer
(``edge_agent.learn.buffer``, in a temporary directory) with the same ``[learn]`` settings. A
push with a missing value counts as one with a sensor fault (data quality turns a bad reading
into NaN on the gateway). From there:

- :func:`adapt` runs the gateway's round (``edge_agent.learn.train_round``) and returns the
  signed delta: byte for byte what a gateway with that key, this history, the same round and
  settings, and the same ``created_at`` sends (``tests/edge_agent/learn/test_adapt_cli.py``);
- :func:`local_threshold` is the gateway's personalisation (``edge_agent.learn.personalise``)
  of the bundle's model on the file's normal windows.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.bundle.verify import VerifiedBundle
from edge_agent.config.model import EventsConfig
from edge_agent.data.table import read_table
from edge_agent.detect.cascade import Cascade
from edge_agent.errors import BundleError
from edge_agent.learn.buffer import BYTES_PER_MIB, BufferSettings, NormalBuffer
from edge_agent.learn.bundle_weights import train_weights_from_bytes
from edge_agent.learn.config import LearnConfig
from edge_agent.learn.personalise import LocalThreshold, calibrate
from edge_agent.learn.rounds import RoundAnnouncement, iso_utc
from edge_agent.learn.select import NormalRows
from edge_agent.learn.train_round import F32, Budget, RoundOutput, run_round
from edge_agent.model_slot import ModelSlot

PUSH_ROWS = 500  # rows per push: a replay source's block
OFFLINE_MACHINE = "offline"  # the episode tracker's machine id (nothing is sent)
DEADLINE_S = 3600.0  # the local round's nominal deadline after created_at (not checked)


@dataclass(frozen=True)
class AdaptResult:
    output: RoundOutput
    windows: int  # buffered normal windows found in the history
    rows_kept: int


def normal_windows(bundle: VerifiedBundle, data: Path, cfg: LearnConfig, *,
                   time_col: str | None = None, cascade: Cascade | None = None) -> tuple[F32, int]:
    """The gateway's buffered normal windows of ``data`` (at most ``max_windows``), and the rows
    kept; ``cascade`` scores (a fresh one of the bundle when None)."""
    m = bundle.manifest
    slot = ModelSlot(bundle, cascade, machine_id=OFFLINE_MACHINE, events=EventsConfig()) if (
        cascade is not None) else ModelSlot.from_verified(
        bundle, machine_id=OFFLINE_MACHINE, events=EventsConfig())
    table = read_table(data, time_col=time_col, channels=m.channel_names).select(m.channel_names)
    selector = NormalRows(cfg.normal_score_ratio)
    threshold = slot.cascade.threshold.alert_threshold
    with tempfile.TemporaryDirectory(prefix="edge-adapt-") as tmp:
        buf = NormalBuffer(Path(tmp), BufferSettings(
            cfg.chunk_rows, cfg.sample_every_s, int(cfg.max_mb * BYTES_PER_MIB)))
        for a in range(0, table.rows, PUSH_ROWS):
            ts, rows = table.timestamps[a : a + PUSH_ROWS], table.values[a : a + PUSH_ROWS]
            batch = slot.pipeline.push(ts, rows)
            slot.episodes.update(batch, time.time())
            keep = selector.keep(rows, batch, threshold, fault=not np.isfinite(rows).all(),
                                 open_episode=slot.episodes.open_episode is not None)
            buf.add(ts, rows, keep, m)
        buf.flush(m)
        return buf.windows(m, cfg.max_windows), buf.stats().rows


def adapt(bundle: VerifiedBundle, data: Path, cfg: LearnConfig, key: Ed25519PrivateKey, *,
          machine_id: str, round_id: str, created_at: str, seed: int = 0,
          time_col: str | None = None) -> AdaptResult:
    """The gateway's round on ``data`` (settings: ``cfg``'s scheduled-round ones)."""
    m = bundle.manifest
    learning = m.learning
    data_file = None if learning is None or learning.file is None else bundle.files.get(
        learning.file)
    weights = None if data_file is None else train_weights_from_bytes(data_file, m)
    if weights is None:
        why = "no learning section" if learning is None else learning.reason or "no weights"
        raise BundleError(f"{bundle.path}: model {m.model_version} is not trainable on the "
                          f"device ({why})")
    windows, kept = normal_windows(bundle, data, cfg, time_col=time_col)
    if windows.shape[0] < cfg.min_windows:
        raise BundleError(f"{data}: {windows.shape[0]} normal windows kept, fewer than "
                          f"--min-windows {cfg.min_windows}")
    issued = _epoch(created_at)
    created_at = iso_utc(issued)  # the gateway's form: seconds, Z
    announcement = RoundAnnouncement(
        round_id=round_id, base_model_version=m.model_version,
        base_fingerprint=weights.fingerprint(), epochs=cfg.epochs, batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, prox_mu=cfg.prox_mu, topk_fraction=cfg.topk_fraction,
        min_windows=cfg.min_windows, seed=seed, issued_at=iso_utc(issued),
        deadline=iso_utc(issued + DEADLINE_S),
    )
    out = run_round(m, weights, windows, announcement, Budget(cfg.max_cpu_s, cfg.max_windows),
                    machine_id=machine_id, key=key, residual=None, created_at=created_at)
    return AdaptResult(out, int(windows.shape[0]), kept)


def local_threshold(bundle: VerifiedBundle, cascade: Cascade, data: Path, cfg: LearnConfig, *,
                    time_col: str | None = None) -> LocalThreshold:
    """The gateway's local threshold of the bundle's model for ``data``'s normal windows."""
    windows, _ = normal_windows(bundle, data, cfg, time_col=time_col)
    return calibrate(bundle.manifest, cascade.autoencoder, windows,
                     quantile=cfg.personal_quantile, min_windows=cfg.personal_min_windows)


def personalise_cascade(bundle: VerifiedBundle, cascade: Cascade, history: Path, *,
                        time_col: str | None = None) -> str:
    """Give ``cascade`` the threshold a gateway with ``history`` (default ``[learn]``
    settings) would use; returns a line saying which and why."""
    result = local_threshold(bundle, cascade, history, LearnConfig(), time_col=time_col)
    if result.source == "local":
        cascade.threshold = bundle.manifest.threshold.scaled(result.scale)
    return (f"local history {history}: alert threshold {result.alert_threshold:.6g} "
            f"({result.source}, scale {result.scale:.4g}: {result.reason})")


def _epoch(stamp: str) -> float:
    from edge_agent.ota.protocol import parse_time

    try:
        return parse_time(stamp)
    except ValueError:
        raise BundleError(f"--created-at {stamp!r}: not an ISO 8601 time") from None
