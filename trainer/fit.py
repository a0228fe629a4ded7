"""``trainer fit``: from a history file to a run directory holding the two-stage detector.

Steps: read → grid (the device's rules, plus interpolation of long gaps) → normalize → windows
→ Isolation Forest on window features (the device's Numba kernels) → autoencoder on windows →
threshold on held-out normal windows → screen threshold from labelled or synthetic anomalies.
The run directory is written to a temporary sibling and renamed into place, so a failed run
leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.bundle.manifest import ChannelSpec, ForestSpec, SamplingSpec, WindowSpec
from edge_agent.data.grid import align_to_grid, interpolate_held_runs
from edge_agent.data.learned import LearnedLimits
from edge_agent.data.table import SensorTable
from edge_agent.detect.baseline import LevelBaseline, LevelState
from edge_agent.detect.cascade import reconstruction_error
from edge_agent.detect.forest import FlatForest
from edge_agent.detect.projection import STAT_NAMES, fit_projection
from edge_agent.detect.windows import (
    FEATURE_SET_VERSION,
    FEATURES_PER_CHANNEL,
    gather_windows,
    normalize,
    screen_features,
    window_ends,
)
from edge_agent.errors import DataError
from trainer.calibrate import calibrate_threshold, screen_threshold
from trainer.config import ThresholdConfig, TrainConfig
from trainer.forest import fit_forest, fit_window_residual
from trainer.history_findings import is_trending
from trainer.history_trend import robust_trend
from trainer.quant_aware import fine_tune
from trainer.run_record import RUN_FILE, AutoencoderTraining, RunRecord, ValidationSummary
from trainer.synthetic import inject

log = logging.getLogger("trainer.fit")

FOREST_FILE = "forest.npz"
MODEL_FILE = "autoencoder.keras"
CALIBRATION_FILE = "calibration.npz"
# Representative windows kept for int8 calibration in export.
REPRESENTATIVE_WINDOWS = 1000
# Fewer held-out windows than this cannot calibrate a tail.
MIN_VALIDATION_WINDOWS = 30
# Held-out windows kept for calibration and synthetic faults: enough for a 1e-3 tail, and
# bounded so a long history does not spend minutes scoring near-duplicate windows.
MAX_VALIDATION_WINDOWS = 6000
# The history is cut into this many folds for the held-out split (see split_validation).
VALIDATION_FOLDS = 10


@dataclass
class Prepared:
    """History on the grid, normalized, with its windows."""

    xn: npt.NDArray[np.float32]
    ends: npt.NDArray[np.int64]
    window_labels: npt.NDArray[np.int8]
    mean: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]
    period_s: float
    clean_rows: npt.NDArray[np.bool_]  # grid points fully measured and labelled normal
    baseline: LevelBaseline | None  # channels judged against an adapting level


def level_baseline(table: SensorTable, cfg: TrainConfig) -> LevelBaseline | None:
    """The channels whose level adapts on the gateway (``cfg.baseline.adapt``): with
    ``trending``, those ``trainer fit``'s drift warning names, judged on normal rows only."""
    b = cfg.baseline
    if b.adapt == "none":
        return None
    if isinstance(b.adapt, list):
        unknown = sorted(set(b.adapt) - set(table.channels))
        if unknown:
            raise DataError(
                f"[baseline] adapt names channels the history lacks: {unknown}", path=table.path
            )
        names = [n for n in table.channels if n in b.adapt]
    elif b.adapt == "all":
        names = list(table.channels)
    else:
        normal = table.normal_rows()
        names = [
            name
            for j, name in enumerate(table.channels)
            if is_trending(robust_trend(table.timestamps[normal], table.values[normal, j]), cfg)
        ]
    if not names:
        return None
    return LevelBaseline(
        channels=names,
        time_constant_s=b.time_constant_s,
        max_step=b.max_step,
        max_offset=b.max_offset,
    )


def learned_channel_limits(table: SensorTable) -> LearnedLimits:
    """Each channel's learned data-quality limits (``edge_agent.data.learned``), from
    the history's readings as recorded; labelled anomalies (stuck, noisy or spiking faults
    among them) do not count."""
    return LearnedLimits.learn(np.where(table.normal_rows()[:, None], table.values, np.nan))


def median_period(table: SensorTable) -> float:
    steps = np.diff(table.timestamps)
    steps = steps[steps > 0]
    if steps.size == 0:
        raise DataError("cannot infer the sample period: all timestamps are equal", path=table.path)
    return float(np.median(steps))


def prepare_history(table: SensorTable, cfg: TrainConfig) -> Prepared:
    period = cfg.data.period_s or median_period(table)
    raw_mean = np.nanmean(table.values, axis=0)
    grid = align_to_grid(
        table.timestamps,
        table.values,
        period_s=period,
        max_hold=cfg.data.max_hold,
        fill=raw_mean,
    )
    grid = interpolate_held_runs(grid, max_ffill=cfg.data.max_ffill)
    m = grid.times.shape[0]
    label = np.zeros(m, np.int8)
    for lab in table.labels.values():
        np.maximum.at(label, grid.row_to_grid, lab)
    # Grid points filled in a gap inherit the label of the row before them.
    has_row = np.zeros(m, np.bool_)
    has_row[grid.row_to_grid] = True
    last = np.maximum.accumulate(np.where(has_row, np.arange(m), 0))
    label = label[last]

    clean = ~grid.imputed & (label[:, None] == 0)
    mean = np.empty(len(table.channels))
    scale = np.empty(len(table.channels))
    for j, name in enumerate(table.channels):
        col = grid.values[clean[:, j], j]
        if col.size < 2:
            raise DataError(
                "channel has fewer than 2 measured normal samples", path=table.path, column=name
            )
        mean[j] = col.mean()
        floor = max(cfg.data.scale_floor * abs(mean[j]), 1e-9)
        scale[j] = max(float(col.std()), floor)
    xn = normalize(grid.values, mean, scale)
    # The gateway judges trending channels against a level that follows them: so does training.
    baseline = level_baseline(table, cfg)
    LevelState.of(baseline, list(table.channels), period).apply(xn, grid.imputed)
    w = cfg.window.length
    ends = window_ends(grid.segment_start, grid.imputed, w, 1, cfg.data.max_imputed_fraction)
    if ends.size == 0:
        longest = int(np.max(np.bincount(grid.segment_start))) if m else 0
        raise DataError(
            f"window length {w} samples is longer than the data allows (longest gap-free "
            f"stretch is {longest} samples of {period:g} s); use a shorter [window] length",
            path=table.path,
        )
    cum = np.concatenate([[0], np.cumsum(label)])
    window_labels = ((cum[ends + 1] - cum[ends + 1 - w]) > 0).astype(np.int8)
    return Prepared(xn, ends, window_labels, mean, scale, period, clean.all(axis=1), baseline)


def split_validation(
    normal: npt.NDArray[np.intp],
    ends: npt.NDArray[np.int64],
    window: int,
    fraction: float,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Hold out ``fraction`` of the normal windows as contiguous blocks spread over the history.

    The history is cut into ``VALIDATION_FOLDS`` time-ordered folds and every k-th fold is held
    out, the last fold always among them: the threshold then sees the latest behaviour (drift)
    and also every kind of operating period the history covers (a shift pattern, a stop), not
    just whatever the last hours happened to be. Training windows that overlap a held-out one
    are dropped so no held-out sample is trained on.
    """
    n_val_folds = max(1, round(fraction * VALIDATION_FOLDS))
    step = VALIDATION_FOLDS / n_val_folds
    val_folds = {VALIDATION_FOLDS - 1 - int(i * step) for i in range(n_val_folds)}
    fold = (np.arange(normal.size) * VALIDATION_FOLDS) // max(normal.size, 1)
    is_val = np.isin(fold, sorted(val_folds))
    if is_val.sum() < MIN_VALIDATION_WINDOWS:
        is_val = np.zeros(normal.size, bool)
        is_val[-MIN_VALIDATION_WINDOWS:] = True
    val_idx = normal[is_val]
    val_ends = np.sort(ends[val_idx])
    train_idx = normal[~is_val]
    te = ends[train_idx]
    pos = np.searchsorted(val_ends, te)
    after = np.abs(val_ends[np.clip(pos, 0, val_ends.size - 1)] - te)
    before = np.abs(te - val_ends[np.clip(pos - 1, 0, val_ends.size - 1)])
    keep = np.minimum(after, before) >= window
    return train_idx[keep], val_idx


def data_fingerprint(table: SensorTable) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(list(table.channels)).encode())
    h.update(np.ascontiguousarray(table.timestamps).tobytes())
    h.update(np.ascontiguousarray(table.values).tobytes())
    return h.hexdigest()


class KerasReconstructor:
    """Float Keras model behind the cascade's ``Reconstructor`` contract (desk only)."""

    def __init__(self, model: Any, batch: int = 1024) -> None:
        self.model = model
        self.batch = batch

    def reconstruct(self, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = [
            np.asarray(self.model(windows[i : i + self.batch], training=False))
            for i in range(0, windows.shape[0], self.batch)
        ]
        return np.concatenate(out).astype(np.float32) if out else windows.copy()


def _progress_callback(epochs: int) -> Any:
    import keras
    from tqdm.auto import tqdm

    class Progress(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_begin(self, logs: Any = None) -> None:
            # disable=None: a bar on a terminal, silence in logs and CI.
            self.bar = tqdm(
                total=epochs, desc="autoencoder", unit="epoch", leave=False, disable=None
            )

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            self.bar.set_postfix(
                loss=f"{logs.get('loss', 0):.4f}", val=f"{logs.get('val_loss', 0):.4f}"
            )
            self.bar.update(1)

        def on_train_end(self, logs: Any = None) -> None:
            self.bar.close()

    return Progress()


def representative_windows(train_w: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The training windows kept for export's int8 calibration: evenly spaced over the history."""
    idx = np.linspace(0, train_w.shape[0] - 1, min(REPRESENTATIVE_WINDOWS, train_w.shape[0]))
    return train_w[idx.astype(int)]


def rare_window_weights(
    windows: npt.NDArray[np.float32], recon: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    """Each training window's weight in the second pass: its error over the median error,
    never under 1, scaled to a mean of 1.

    Ordinary windows keep one weight; a window the first pass reconstructed k times worse
    than the median weighs k. On the simulator's 2-day history (bench/simulator.py), the
    windows holding a start or a stop were 2 % of the training windows and weighed up to 24;
    after the pass, the held-out errors' 99.9th percentile fell from 0.075 to 0.038 and
    fault windows over it rose from 25 % to 42 %. Squared weights did worse (0.3 % of
    normal windows of a fresh run over that percentile, against 0.2 %).
    """
    # Weighted against the training loss, which is the mean over samples and channels, whatever
    # statistic the threshold later judges windows by.
    err, _ = reconstruction_error(windows, recon, "mean")
    w = np.maximum(err / max(float(np.median(err)), 1e-12), 1.0)
    return w / w.mean()


def train_autoencoder(
    train_w: npt.NDArray[np.float32], val_w: npt.NDArray[np.float32], cfg: TrainConfig, seed: int
) -> tuple[Any, dict[str, Any]]:
    import keras
    import tensorflow as tf

    from trainer.models import build_autoencoder

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    gpus = tf.config.list_physical_devices("GPU")
    log.info("TensorFlow %s, training on %s", tf.__version__, "GPU" if gpus else "CPU")
    a = cfg.autoencoder
    model = build_autoencoder(a.kind, train_w.shape[1], train_w.shape[2], seed=seed)
    model.optimizer.learning_rate.assign(a.learning_rate)
    steps = train_w.shape[1]

    def run_pass(epochs: int, weights: npt.NDArray[np.float64] | None) -> dict[str, list[float]]:
        """One pass with early stopping on the plain validation loss; its best weights kept."""
        stop = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=a.patience, restore_best_weights=True
        )
        history: dict[str, list[float]] = model.fit(
            train_w,
            train_w,
            # Keras' MSE leaves one loss per time step: one weight per window, on every step.
            sample_weight=None if weights is None else np.repeat(weights[:, None], steps, axis=1),
            validation_data=(val_w, val_w),
            epochs=epochs,
            batch_size=a.batch_size,
            shuffle=True,
            verbose=0,
            callbacks=[stop, _progress_callback(epochs)],
        ).history
        return history

    losses = run_pass(a.epochs, None)
    last = losses
    rare_epochs = 0
    weights = None
    if a.rare_pass_epochs():
        weights = rare_window_weights(train_w, KerasReconstructor(model).reconstruct(train_w))
        last = run_pass(a.rare_pass_epochs(), weights)
        rare_epochs = len(last["loss"])
    quant_epochs = fine_tune(
        model,
        train_w,
        val_w,
        representative_windows(train_w),
        epochs=a.quantization_aware_pass_epochs(),
        learning_rate=a.learning_rate / 10,
        batch_size=a.batch_size,
        weights=weights,
        seed=seed,
    )
    info = {
        "epochs_run": len(losses["loss"]),
        "rare_window_epochs_run": rare_epochs,
        "quantization_aware_epochs_run": quant_epochs,
        "final_loss": float(losses["loss"][-1]),
        "best_val_loss": float(min(last["val_loss"])),
        "device": "GPU" if gpus else "CPU",
        "tensorflow": tf.__version__,
        "parameters": int(model.count_params()),
    }
    return model, info


def fit(
    table: SensorTable, out: Path, cfg: TrainConfig, *, seed: int = 0, overwrite: bool = False
) -> RunRecord:
    """Train on ``table`` and write the run directory ``out``; returns the run record."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    t0 = time.perf_counter()
    prep = prepare_history(table, cfg)
    w = cfg.window.length
    normal = np.flatnonzero(prep.window_labels == 0)
    if normal.size < 2 * MIN_VALIDATION_WINDOWS:
        raise DataError(
            f"only {normal.size} normal windows of {w} samples; need at least "
            f"{2 * MIN_VALIDATION_WINDOWS} (more history or a shorter window)",
            path=table.path,
        )
    train_idx, val_idx = split_validation(normal, prep.ends, w, cfg.autoencoder.validation_fraction)
    if train_idx.size > cfg.window.max_windows:
        train_idx = train_idx[
            np.linspace(0, train_idx.size - 1, cfg.window.max_windows).astype(int)
        ]
    if val_idx.size > MAX_VALIDATION_WINDOWS:
        val_idx = val_idx[np.linspace(0, val_idx.size - 1, MAX_VALIDATION_WINDOWS).astype(int)]
    train_ends, val_ends = prep.ends[train_idx], prep.ends[val_idx]
    anomalous_ends = prep.ends[prep.window_labels == 1]
    log.info(
        "%d windows of %d x %d: %d train, %d held out, %d labelled anomalous",
        prep.ends.size,
        w,
        len(table.channels),
        train_ends.size,
        val_ends.size,
        anomalous_ends.size,
    )

    # The subspace is fitted on samples the held-out windows do not reach.
    history_rows = np.flatnonzero(prep.clean_rows[: int(train_ends.max()) + 1])
    projection = fit_projection(prep.xn[history_rows])
    stats = projection.sample_stats(prep.xn)
    train_f = screen_features(prep.xn, stats, train_ends, w)
    _, forest = fit_forest(
        train_f,
        n_trees=cfg.forest.n_trees,
        max_samples=cfg.forest.max_samples,
        seed=seed,
        projection=projection,
        envelope=cfg.forest.envelope,
        envelope_quantiles=_spe_edge(len(table.channels), cfg),
    )
    train_w = gather_windows(prep.xn, train_ends, w)
    val_w = gather_windows(prep.xn, val_ends, w)
    history_samples = int(prep.xn.shape[0])
    forest = screen_limits(forest, train_w, val_w, cfg, history_samples)
    model, train_info = train_autoencoder(train_w, val_w, cfg, seed)
    recon = KerasReconstructor(model)

    val_err, _ = reconstruction_error(val_w, recon.reconstruct(val_w), cfg.threshold.statistic)
    threshold = calibrate_threshold(val_err, cfg.threshold, history_samples=history_samples)

    synth_w, synth_kinds = inject(val_w, seed=seed, copies=2)
    labelled_w = gather_windows(prep.xn, anomalous_ends, w)
    pos_w = np.concatenate([synth_w, labelled_w]) if anomalous_ends.size else synth_w
    pos_f = features_of_windows(pos_w, forest)
    pos_err, _ = reconstruction_error(pos_w, recon.reconstruct(pos_w), cfg.threshold.statistic)
    pos_forest = forest.screen_score(pos_f, pos_w)
    detected = pos_err >= threshold.alert_threshold
    screen = screen_threshold(pos_forest, detected, keep_recall=cfg.cascade.keep_recall)
    val_forest = forest.screen_score(screen_features(prep.xn, stats, val_ends, w), val_w)
    limits = learned_channel_limits(table)
    record = RunRecord(
        trainer_version=_version(),
        seed=seed,
        config=cfg,
        source=str(table.path),
        rows=table.rows,
        history_samples=history_samples,
        threshold_margin=cfg.threshold.effective_margin(history_samples),
        data_fingerprint=data_fingerprint(table),
        channels=[
            ChannelSpec(
                name=n,
                unit="",
                mean=float(m),
                scale=float(s),
                stuck_after=limits.stuck_after[j],
                noisy_above=limits.noisy_above[j],
                jump_above=limits.jump_above[j],
                spike_above=limits.spike_above[j],
            )
            for j, (n, m, s) in enumerate(zip(table.channels, prep.mean, prep.scale, strict=True))
        ],
        sampling=SamplingSpec(
            period_s=prep.period_s,
            max_hold=cfg.data.max_hold,
            max_imputed_fraction=cfg.data.max_imputed_fraction,
        ),
        window=WindowSpec(length=w, hop=cfg.window.hop, feature_set=FEATURE_SET_VERSION),
        forest=ForestSpec(
            file=FOREST_FILE,
            n_trees=forest.n_trees,
            max_samples=forest.max_samples,
            screen_threshold=screen,
            envelope=forest.envelope is not None,
            residual=forest.residual is not None,
        ),
        autoencoder=AutoencoderTraining(kind=cfg.autoencoder.kind, **train_info),
        threshold=threshold,
        alerts=cfg.alerts,
        baseline=prep.baseline,
        validation=ValidationSummary(
            windows=int(val_ends.size),
            false_alarm_rate=float(np.mean(val_err >= threshold.alert_threshold)),
            screened_fraction=float(np.mean(val_forest >= screen)),
            positives=int(pos_w.shape[0]),
            stage2_recall=float(detected.mean()),
            cascade_recall=float(np.mean(detected & (pos_forest >= screen))),
        ),
        fit_seconds=round(time.perf_counter() - t0, 2),
    )
    pos_labels = np.ones(pos_w.shape[0], np.int8)
    parity_w = np.concatenate([val_w, pos_w])
    parity_labels = np.concatenate([np.zeros(val_w.shape[0], np.int8), pos_labels])
    _write_run(
        out,
        record=record,
        forest_bytes=forest.to_bytes(),
        model=model,
        arrays={
            "representative": representative_windows(train_w),
            "val_windows": val_w,
            # The screen's calibration set (export recalibrates the screen on it); export's
            # parity gate builds its own set from val_windows and labelled_windows.
            "parity_windows": parity_w,
            "parity_labels": parity_labels,
            "labelled_windows": labelled_w,
            "synthetic_kinds": np.array(synth_kinds),
        },
        overwrite=overwrite,
    )
    return record


def screen_limits(
    forest: FlatForest,
    train_w: npt.NDArray[np.float32],
    val_w: npt.NDArray[np.float32],
    cfg: TrainConfig,
    history_samples: int,
) -> FlatForest:
    """The forest with the screen's window residual (its limit set on the held-out windows)
    and, with ``[forest] limits_follow_margin``, its envelope and residual limit widened by
    :func:`screen_headroom`."""
    if cfg.forest.residual:
        residual = fit_window_residual(
            train_w,
            explained=cfg.forest.residual_explained,
            quantile=cfg.forest.residual_quantile,
            held_out=val_w,
        )
        forest = dataclasses.replace(forest, residual=residual)
    if not cfg.forest.limits_follow_margin:
        return forest
    factor = screen_headroom(cfg.threshold, history_samples)
    log.info("screen limits widened %.5gx for a history of %d samples", factor, history_samples)
    return dataclasses.replace(
        forest,
        envelope=forest.envelope.widened(factor) if forest.envelope else None,
        residual=forest.residual.widened(factor) if forest.residual else None,
    )


def screen_headroom(threshold: ThresholdConfig, history_samples: int) -> float:
    """How much the screen's limits widen for a history this long: the threshold's extra
    margin, times the same share of it again (the full 2.25 up to ``margin_full_below``
    samples; 1.31 at twice that; 1.00004 on 2 days of the simulator).

    It fades faster than the threshold's margin (1.007 on those 2 days) because a screen
    limit widened on a long history drops the faint windows at its edge that stage 2 still
    alerts on: at 1.007 the simulator's seeds 31/32 kept 97.9 % of stage 2's recall, against
    98.5 % without. And it goes no higher than the threshold's 2.25 on short histories: at
    3, a screen fitted on 1,000 samples of the simulator kept only 94 % (SKAB alone would
    allow 4; ``bench/screen_headroom.py``)."""
    share = min(1.0, threshold.margin_full_below / max(history_samples, 1))
    return 1.0 + (threshold.effective_margin(history_samples) - 1.0) * share


def _spe_edge(channels: int, cfg: TrainConfig) -> dict[int, float]:
    """The envelope's upper edge of the window mean SPE column, as a training quantile."""
    return {channels * FEATURES_PER_CHANNEL + STAT_NAMES.index("spe_mean"): cfg.forest.spe_quantile}


def features_of_windows(
    windows: npt.NDArray[np.float32], forest: FlatForest
) -> npt.NDArray[np.float32]:
    """Screen features of standalone windows ``(n, W, C)`` via the device kernels."""
    n, w, c = windows.shape
    flat = np.ascontiguousarray(windows.reshape(n * w, c))
    ends = np.arange(w - 1, n * w, w, dtype=np.int64)
    return screen_features(flat, forest.sample_stats(flat), ends, w)


def _version() -> str:
    from edge_agent import __version__

    return __version__


def _write_run(
    out: Path,
    *,
    record: RunRecord,
    forest_bytes: bytes,
    model: Any,
    arrays: dict[str, npt.NDArray[Any]],
    overwrite: bool,
    extra_files: dict[str, bytes] | None = None,
) -> None:
    """Write a run directory atomically; ``extra_files`` (name → bytes) go in with the rest."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / FOREST_FILE).write_bytes(forest_bytes)
        model.save(tmp / MODEL_FILE)
        np.savez(tmp / CALIBRATION_FILE, **arrays)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        (tmp / RUN_FILE).write_text(record.to_json(), encoding="utf-8")
        # mkdtemp makes the directory private; a bundle/run is meant to be readable.
        tmp.chmod(0o755)
        if out.exists():
            if not overwrite and any(out.iterdir()):
                raise FileExistsError(f"{out} appeared while training; not replacing it")
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
