"""Scoring for the fleet-learning benchmarks: a global model's weights, as each machine runs it.

Shared by ``bench/fleet_learning.py`` and ``bench/fleet_skab.py``. A trainer run (the desk's
initial model, or any run) is loaded once (:func:`load_global`); any weights of its layout then
become a cascade (:func:`global_cascade`): the run's forest and channel normalization, the
weights in the device's numpy dense autoencoder (``edge_agent.learn.dense``, equal to the Keras
float model within 1e-5), and the float thresholds recalibrated on the run's held-out normal
windows and synthetic anomalies exactly as ``trainer federate`` writes its new run
(``trainer.federate.run_out``). :func:`local_threshold` is the machine's own threshold on its
normal windows: the gateway's personalisation rule (``edge_agent.learn.personalise``), and
:func:`score` runs the device pipeline over a machine's file and computes the trainer's point
metrics on the scored rows, plus the ranking metrics of stage 2's error (threshold-free: how
well the model separates faults, whatever threshold a machine picks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.bundle.manifest import LearningLayerSpec, Manifest
from edge_agent.data.table import SensorTable
from edge_agent.detect.cascade import Cascade, reconstruction_error
from edge_agent.detect.forest import FlatForest
from edge_agent.detect.threshold import ErrorStatistic, ThresholdModel
from edge_agent.learn.config import DEFAULT_PERSONAL_MIN_WINDOWS, DEFAULT_PERSONAL_QUANTILE
from edge_agent.learn.dense import DenseAutoencoder
from edge_agent.learn.personalise import calibrate
from edge_agent.learn.weights import WeightSet
from edge_agent.pipeline import run_pipeline
from trainer.calibrate import calibrate_threshold, screen_threshold
from trainer.config import TrainConfig
from trainer.evaluate.metrics import point_metrics, pr_auc, roc_auc
from trainer.evaluate.run import manifest_from_run
from trainer.federate.run_out import BaseRun
from trainer.fit import features_of_windows

METRIC_KEYS = ("f1", "precision", "recall", "far", "mar", "pr_auc", "roc_auc")


@dataclass(frozen=True)
class GlobalModel:
    """A trainer run in memory: what every weight set of its layout is scored with."""

    base: BaseRun  # as ``trainer federate`` loads it (Keras model, forest, calibration arrays)
    manifest: Manifest  # the run's manifest (float thresholds of its weights), learning set
    weights: WeightSet
    layers: list[LearningLayerSpec]
    forest: FlatForest
    config: TrainConfig
    history_samples: int
    val_windows: np.ndarray
    positive_windows: np.ndarray


def load_global(run_dir: Path) -> GlobalModel:
    """Load a ``trainer fit`` run (TensorFlow, at the desk only)."""
    from export.train_weights import learning_files
    from trainer.federate.run_out import load_base

    base = load_base(run_dir)
    run = base.run
    spec, _ = learning_files(run.model, run.record.autoencoder.kind)
    if not spec.trainable:
        raise ValueError(f"{run_dir}: the model is not trainable on the device ({spec.reason})")
    arrays = run.arrays
    positives = arrays["parity_windows"][arrays["parity_labels"] == 1]
    return GlobalModel(
        base=base,
        manifest=manifest_from_run(run.record).model_copy(update={"learning": spec}),
        weights=base.weights,
        layers=list(spec.layers),
        forest=run.forest,
        config=run.record.config,
        history_samples=run.record.history_samples,
        val_windows=np.ascontiguousarray(arrays["val_windows"], dtype=np.float32),
        positive_windows=np.ascontiguousarray(positives, dtype=np.float32),
    )


def autoencoder(g: GlobalModel, weights: WeightSet) -> DenseAutoencoder:
    return DenseAutoencoder(weights, [layer.activation for layer in g.layers])


def errors_of(ae: DenseAutoencoder, windows: np.ndarray, statistic: ErrorStatistic) -> np.ndarray:
    """Reconstruction error per window by ``statistic``, as the cascade computes it."""
    w = np.ascontiguousarray(windows, dtype=np.float32)
    err, _ = reconstruction_error(w, ae.reconstruct(w), statistic)
    return err


def global_cascade(g: GlobalModel, weights: WeightSet) -> tuple[Manifest, Cascade]:
    """The run's pipeline with ``weights``: thresholds recalibrated as ``run_out`` does."""
    ae = autoencoder(g, weights)
    threshold = calibrate_threshold(
        errors_of(ae, g.val_windows, g.config.threshold.statistic),
        g.config.threshold, history_samples=g.history_samples
    )
    pos_err = errors_of(ae, g.positive_windows, threshold.statistic)
    detected = pos_err >= threshold.alert_threshold
    pos_forest = g.forest.screen_score(
        features_of_windows(g.positive_windows, g.forest), g.positive_windows
    )
    screen = screen_threshold(pos_forest, detected, keep_recall=g.config.cascade.keep_recall)
    manifest = g.manifest.model_copy(
        update={
            "threshold": threshold,
            "forest": g.manifest.forest.model_copy(update={"screen_threshold": screen}),
        }
    )
    cascade = Cascade(forest=g.forest, screen_threshold=screen, autoencoder=ae, threshold=threshold)
    return manifest, cascade


def with_threshold(
    manifest: Manifest, cascade: Cascade, threshold: ThresholdModel
) -> tuple[Manifest, Cascade]:
    """The same pipeline with the machine's own threshold."""
    m = manifest.model_copy(update={"threshold": threshold})
    c = Cascade(
        forest=cascade.forest,
        screen_threshold=cascade.screen_threshold,
        autoencoder=cascade.autoencoder,
        threshold=threshold,
    )
    return m, c


def local_threshold(
    manifest: Manifest, cascade: Cascade, windows: np.ndarray, *, bounded: bool = True
) -> tuple[ThresholdModel, dict[str, Any]]:
    """The machine's own threshold from its normal ``windows``: the gateway's rule
    (``edge_agent.learn.personalise.calibrate`` with the ``[learn]`` defaults: the ratio of the
    95th percentiles of this machine's errors and the desk's, clamped to the manifest's bounds,
    0.8 to 1.5). ``bounded=False`` applies the raw ratio (the same rule without the bounds)."""
    w = np.ascontiguousarray(windows, dtype=np.float32)
    result = calibrate(
        manifest,
        cascade.autoencoder,
        w,
        quantile=DEFAULT_PERSONAL_QUANTILE,
        min_windows=DEFAULT_PERSONAL_MIN_WINDOWS,
    )
    scale = result.scale
    if not bounded and result.raw_scale is not None:
        scale = result.raw_scale
    info = {
        "source": result.source,
        "scale": round(scale, 4),
        "raw_scale": None if result.raw_scale is None else round(result.raw_scale, 4),
    }
    return manifest.threshold.scaled(scale), info


def score(
    table: SensorTable,
    manifest: Manifest,
    cascade: Cascade,
    skip_rows: int,
    *,
    ranking: bool = True,
) -> dict[str, float]:
    """Point metrics of the device pipeline's alerts on rows ``skip_rows:`` of ``table``, and
    (``ranking``) the ROC and PR AUC of stage 2's error alone (every window scored, no screen):
    threshold-free, how well the model separates faults whatever threshold a machine uses."""
    res = run_pipeline(table, manifest, cascade)
    y = table.labels["anomaly"][skip_rows:].astype(bool)
    m = dict(point_metrics(y, res.alert[skip_rows:]))
    if ranking:
        alone = run_pipeline(table, manifest, cascade, screen=False)
        ranked = np.nan_to_num(alone.score[skip_rows:], nan=0.0)
        m["pr_auc"] = pr_auc(y, ranked)
        m["roc_auc"] = roc_auc(y, ranked)
    return {k: round(float(m[k]), 4) for k in METRIC_KEYS if k in m}


def alerts(table: SensorTable, manifest: Manifest, cascade: Cascade, skip_rows: int) -> np.ndarray:
    """The device pipeline's alert per row, rows ``skip_rows:``."""
    return np.asarray(run_pipeline(table, manifest, cascade).alert[skip_rows:], dtype=bool)


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Average of per-machine metrics (each machine counts once)."""
    keys = [k for k in METRIC_KEYS if all(k in r for r in rows)]
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}
