"""``trainer evaluate``: score labelled data with a run (float) or a bundle (int8) and report.

Runs the device pipeline (``edge_agent.pipeline``) twice, with the forest screen and without it
(stage 2 alone), computes the metrics, scores the classic baselines on the same windows (and
the PCA T²/SPE process monitor on each window's newest sample), and writes ``metrics.json``
and an HTML report with plots.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.bundle.manifest import (
    SCHEMA_VERSION,
    AutoencoderSpec,
    Manifest,
    ParitySpec,
)
from edge_agent.bundle.verify import verify_bundle
from edge_agent.data.table import SensorTable
from edge_agent.detect.cascade import Cascade
from edge_agent.detect.windows import screen_features
from edge_agent.errors import DataError
from edge_agent.model_slot import load_cascade
from edge_agent.pipeline import PipelineResult, prepare, run_pipeline
from trainer.evaluate.baselines import run_baselines
from trainer.evaluate.metrics import point_metrics, summarize
from trainer.evaluate.pca_monitor import fit_pca_monitor
from trainer.evaluate.per_kind import DEFAULT_KIND_COL, per_kind_detection, read_kind_column
from trainer.evaluate.report import write_report
from trainer.fit import MODEL_FILE, features_of_windows
from trainer.run_record import RunRecord

#: Fewer training windows than this cannot fit the baselines (nor set a 99 % quantile).
MIN_BASELINE_WINDOWS = 20
#: The PCA T²/SPE monitor's name in the comparison.
PCA_BASELINE = "pca_t2_spe"


def manifest_from_run(record: RunRecord) -> Manifest:
    """A manifest for a not-yet-exported run, so the float model runs the same pipeline."""
    return Manifest(
        schema_version=SCHEMA_VERSION,
        model_version="run",
        created_at="",
        channels=record.channels,
        sampling=record.sampling,
        window=record.window,
        forest=record.forest,
        autoencoder=AutoencoderSpec(file=MODEL_FILE, kind=record.autoencoder.kind),
        threshold=record.threshold,
        alerts=record.alerts,
        training=record.training_spec(sources=[record.source]),
        parity=ParitySpec(
            windows=0, positives=0, f1_float=0, f1_int8=0, auc_float=0, auc_int8=0, error_rel_mae=0
        ),
        files={},
        baseline=record.baseline,
    )


def load_scorer(
    run_dir: Path | None, bundle_dir: Path | None, trust: Path | None
) -> tuple[Manifest, Cascade, npt.NDArray[np.float32], str]:
    """The manifest, cascade and baseline training windows of a run or a bundle."""
    if bundle_dir is not None:
        if trust is None:
            raise DataError("--bundle needs --trust KEY.pub")
        b = verify_bundle(bundle_dir, trust)
        cascade = load_cascade(b)
        rep = np.zeros((0, b.manifest.window.length, len(b.manifest.channels)), np.float32)
        if run_dir is not None:
            with np.load(run_dir / "calibration.npz", allow_pickle=False) as z:
                rep = z["representative"]
        return b.manifest, cascade, rep, f"int8 bundle {b.manifest.model_version}"
    if run_dir is None:
        raise DataError("give --run RUN_DIR or --bundle BUNDLE_DIR")
    from export.run_dir import load_run
    from trainer.fit import KerasReconstructor

    run = load_run(run_dir)
    m = manifest_from_run(run.record)
    cascade = Cascade(
        forest=run.forest,
        screen_threshold=m.forest.screen_threshold,
        autoencoder=KerasReconstructor(run.model),
        threshold=m.threshold,
    )
    return m, cascade, run.arrays["representative"], f"float run {run_dir.name}"


def evaluate(
    table: SensorTable,
    manifest: Manifest,
    cascade: Cascade,
    representative: npt.NDArray[np.float32],
    *,
    label_col: str,
    skip_rows: int = 0,
    seed: int = 0,
    kind_col: str = DEFAULT_KIND_COL,
) -> tuple[dict[str, Any], PipelineResult, dict[str, Any]]:
    """Metrics of the cascade, of stage 2 alone and of the baselines on rows ``skip_rows:``.

    A row counts as flagged as the gateway would report it: in alert, or with a channel past
    one of the model's learned data-quality limits (a ``sensor_fault``,
    ``edge_agent.data.learned``).

    When the table's CSV has a ``kind_col`` column (the simulator's ``fault_kind``), the
    metrics also carry ``per_kind``: episodes, caught and delays per fault kind.
    """
    if label_col not in table.labels:
        raise DataError(f"label column {label_col!r} not read; pass --label-col {label_col}")
    y = table.labels[label_col][skip_rows:].astype(bool)
    ts = table.timestamps[skip_rows:]
    res = run_pipeline(table, manifest, cascade)
    alone = run_pipeline(table, manifest, cascade, screen=False)
    period = manifest.sampling.period_s
    # Cascade score for ranking: stage-1 windows rank below every stage-2 window.
    ranked = np.where(
        res.stage == 2, 1.0 + res.score / manifest.threshold.alert_threshold, res.score * 0.5
    )
    metrics: dict[str, Any] = {
        "rows": int(y.size),
        "cascade": summarize(
            y, res.flagged[skip_rows:], ranked[skip_rows:], ts, period, res.stage[skip_rows:] == 2
        ),
        "stage2_alone": summarize(
            y, alone.flagged[skip_rows:], alone.score[skip_rows:], ts, period, None
        ),
        "sensor_fault_rows": int(res.sensor_fault[skip_rows:].sum()),
    }
    kinds = _kinds_of(table, kind_col)
    if kinds is not None:
        metrics["per_kind"] = {
            name: [k.as_dict() for k in per_kind_detection(y, pred, kinds[skip_rows:], period)]
            for name, pred in (("cascade", res.flagged), ("stage2_alone", alone.flagged))
            for pred in (pred[skip_rows:],)
        }
    # Baselines on the same window features; rows without a window count as normal.
    _, xn, ends = prepare(table, manifest)
    forest = cascade.forest
    test_f = screen_features(xn, forest.sample_stats(xn), ends, manifest.window.length)
    train_f = features_of_windows(np.ascontiguousarray(representative), forest)
    baselines: dict[str, Any] = {}

    def per_row(window_pred: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        row_pred = np.where(
            res.window_of_row >= 0, window_pred[np.clip(res.window_of_row, 0, None)], False
        )
        return row_pred[skip_rows:]

    if train_f.shape[0] >= MIN_BASELINE_WINDOWS and test_f.shape[0]:
        for name, (_, pred) in run_baselines(train_f, test_f, seed=seed).items():
            baselines[name] = point_metrics(y, per_row(pred))
        # The process monitor judges samples: each window by its newest one.
        monitor = fit_pca_monitor(representative.reshape(-1, representative.shape[2]))
        _, pred = monitor.score(xn[ends])
        baselines[PCA_BASELINE] = point_metrics(y, per_row(pred)) | monitor.summary()
    metrics["baselines"] = baselines
    return metrics, res, baselines


def _kinds_of(table: SensorTable, kind_col: str) -> npt.NDArray[np.str_] | None:
    """Each row's fault kind from the table's CSV, None when the file has no such column."""
    if not Path(table.path).is_file():
        return None
    kinds = read_kind_column(table.path, kind_col)
    if kinds is not None and kinds.size != table.rows:
        raise DataError(
            f"{table.path}: column {kind_col!r} has {kinds.size} values for {table.rows} rows read"
        )
    return kinds


def write_outputs(
    out: Path,
    *,
    title: str,
    table: SensorTable,
    manifest: Manifest,
    metrics: dict[str, Any],
    res: PipelineResult,
    baselines: dict[str, Any],
    label_col: str,
    skip_rows: int,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".metrics.", dir=out)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(metrics, fh, indent=2, default=float)
    os.replace(tmp, out / "metrics.json")
    contrib = np.where(
        (res.window_of_row >= 0)[:, None],
        res.windows.contributions[np.clip(res.window_of_row, 0, None)]
        if res.windows.contributions.shape[0]
        else 0.0,
        0.0,
    )
    return write_report(
        out,
        title=title,
        timestamps_s=table.timestamps[skip_rows:],
        y_true=table.labels[label_col][skip_rows:].astype(bool),
        # Stage-2 error in units of the alert threshold: 1.0 is the alert line.
        score=np.where(res.stage == 2, res.score / manifest.threshold.alert_threshold, 0.0)[
            skip_rows:
        ],
        threshold=1.0,
        y_pred=res.flagged[skip_rows:],
        channels=manifest.channel_names,
        contributions=contrib[skip_rows:],
        metrics=metrics["cascade"],
        baselines=baselines,
        stage=res.stage[skip_rows:],
        per_kind=metrics.get("per_kind"),
    )
