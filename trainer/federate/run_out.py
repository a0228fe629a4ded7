"""The new run of a federated round: the base run with the aggregated weights, recalibrated.

Position: the last stage of ``trainer federate``, after the server optimizer has produced the
next global weights. ``NEW_RUN`` is a copy of ``BASE_RUN`` (forest, calibration windows, channel
normalization, settings) whose autoencoder carries the new weights. The float thresholds are
recalibrated with the new weights on the base run's held-out normal windows
(``calibration.npz``: ``val_windows``), and the screen threshold on its labelled and synthetic
anomalous windows (``parity_windows``), with the trainer's own code (``trainer.calibrate``), so
the run reads exactly like one ``trainer fit`` wrote and ``export bundle`` turns it into the
next int8 bundle (which carries the calibration over to the int8 model by their tail error
ratio).

The run is written through ``trainer.fit``'s atomic run writer (temporary sibling, renamed
into place), with ``federate.json`` and the server optimizer's state beside the usual files.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.detect.cascade import reconstruction_error
from edge_agent.learn.weights import WeightSet
from export.run_dir import LoadedRun, load_run
from export.train_weights import keras_weight_set
from trainer.calibrate import calibrate_threshold, screen_threshold
from trainer.fit import FOREST_FILE, KerasReconstructor, _write_run, features_of_windows
from trainer.run_record import FederationSummary, RunRecord, ValidationSummary


def set_keras_weights(model: Any, weights: WeightSet) -> None:
    """Load ``weights`` into ``model``; ValueError naming the first tensor that does not fit."""
    keras_weight_set(model).check_like(weights)
    model.set_weights([np.array(a) for a in weights.arrays])


@dataclass(frozen=True)
class BaseRun:
    """The base run in memory, with its model's weights."""

    path: Path
    run: LoadedRun
    weights: WeightSet

    @cached_property
    def fingerprint(self) -> str:
        """The base weights' fingerprint (hashed once: every delta is checked against it)."""
        return self.weights.fingerprint()


def load_base(run_dir: Path) -> BaseRun:
    """Load a trainer run (ExportError naming what is missing or invalid)."""
    run = load_run(run_dir)
    return BaseRun(run_dir, run, keras_weight_set(run.model))


def recalibrated_record(
    base: BaseRun, model: Any, federation: FederationSummary, seconds: float
) -> RunRecord:
    """The base run's record with thresholds and validation figures of ``model``'s weights."""
    record, arrays, forest = base.run.record, base.run.arrays, base.run.forest
    cfg = record.config
    recon = KerasReconstructor(model)
    val_w = arrays["val_windows"].astype(np.float32)
    val_err, _ = reconstruction_error(val_w, recon.reconstruct(val_w), cfg.threshold.statistic)
    threshold = calibrate_threshold(val_err, cfg.threshold, history_samples=record.history_samples)
    pw = arrays["parity_windows"].astype(np.float32)
    pos_w = np.ascontiguousarray(pw[arrays["parity_labels"] == 1])
    pos_err, _ = reconstruction_error(pos_w, recon.reconstruct(pos_w), cfg.threshold.statistic)
    pos_forest = forest.screen_score(features_of_windows(pos_w, forest), pos_w)
    detected = pos_err >= threshold.alert_threshold
    screen = screen_threshold(pos_forest, detected, keep_recall=cfg.cascade.keep_recall)
    val_w = np.ascontiguousarray(val_w)
    val_forest = forest.screen_score(features_of_windows(val_w, forest), val_w)
    validation = ValidationSummary(
        windows=int(val_w.shape[0]),
        false_alarm_rate=float(np.mean(val_err >= threshold.alert_threshold)),
        screened_fraction=float(np.mean(val_forest >= screen)),
        positives=int(pos_w.shape[0]),
        stage2_recall=float(detected.mean()) if detected.size else 0.0,
        cascade_recall=float(np.mean(detected & (pos_forest >= screen))) if detected.size else 0.0,
    )
    from edge_agent import __version__

    # Validated again as a whole: the new record is held to every rule a fitted one is.
    return RunRecord.model_validate(
        record.model_dump()
        | {
            "trainer_version": __version__,
            "threshold": threshold,
            "forest": record.forest.model_dump() | {"screen_threshold": screen},
            "validation": validation,
            "fit_seconds": round(seconds, 2),
            "federation": federation,
        }
    )


def build_new_run(
    base: BaseRun, weights: WeightSet, federation: FederationSummary, *, seconds: float
) -> tuple[RunRecord, Any]:
    """Load ``weights`` into the base run's model and recalibrate: (new record, model).

    ValueError naming the first tensor when ``weights`` do not fit the model.
    """
    model = base.run.model
    set_keras_weights(model, weights)
    return recalibrated_record(base, model, federation, seconds), model


def check_out_dir(out: Path, base_run: Path, *, overwrite: bool = False) -> None:
    """Refuse a non-empty ``out`` (without ``overwrite``) or the base run itself, up front."""
    if out.resolve() == base_run.resolve():
        raise ValueError(f"{out}: the new run cannot replace its base run")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")


def write_new_run(
    out: Path,
    base: BaseRun,
    record: RunRecord,
    model: Any,
    *,
    extra_files: dict[str, bytes],
    overwrite: bool = False,
) -> None:
    """Write ``out`` atomically: the base run's forest and calibration windows, ``model``,
    ``record`` as run.json, and ``extra_files`` (federate.json, the server state)."""
    check_out_dir(out, base.path, overwrite=overwrite)
    _write_run(
        out,
        record=record,
        forest_bytes=(base.path / FOREST_FILE).read_bytes(),
        model=model,
        arrays=base.run.arrays,
        overwrite=overwrite,
        extra_files=extra_files,
    )
