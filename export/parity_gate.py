"""Running the int8 parity gate on a trainer run: ``export bundle``'s call into ``export.parity``.

Pipeline position: ``export.bundle.build_bundle`` calls :func:`run_gate` after the int8
conversion and the int8 threshold's recalibration, before anything is written. It builds the
parity set (held-out normal windows, sized synthetic faults, the run's labelled windows),
scores it with both models, and either returns the manifest's ``ParitySpec`` or raises an
``ExportError`` that says what failed and what to try (``--force`` records a forced export).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.bundle.manifest import ParitySpec
from edge_agent.detect.autoencoder import Int8Autoencoder
from edge_agent.detect.cascade import reconstruction_error
from edge_agent.detect.threshold import ThresholdModel
from export.errors import ExportError
from export.parity import (
    CLIP_HINT_FRACTION,
    MAX_AUC_DROP,
    MAX_F1_DROP,
    SIGNIFICANCE,
    SIZED_BAND,
    compare,
    input_clip_fraction,
    parity_set,
    sized_faults,
)
from export.run_dir import LoadedRun
from export.tflite_int8 import DEFAULT_MAX_SAMPLES
from trainer.fit import KerasReconstructor

log = logging.getLogger("export.parity")


def labelled_windows(arrays: dict[str, npt.NDArray[Any]]) -> npt.NDArray[np.float32]:
    """The run's labelled anomalous windows; a run written before fit stored them apart has
    them after its synthetic ones among the screen positives."""
    if "labelled_windows" in arrays:
        return arrays["labelled_windows"].astype(np.float32)
    positives = arrays["parity_windows"][arrays["parity_labels"] == 1]
    return positives[len(arrays["synthetic_kinds"]) :].astype(np.float32)


def run_gate(
    run: LoadedRun,
    int8: Int8Autoencoder,
    int8_bytes: bytes,
    val_w: npt.NDArray[np.float32],
    val_errors: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
    thr_q: ThresholdModel,
    *,
    force: bool,
) -> ParitySpec:
    """Compare int8 with float (``export.parity``); ExportError saying what to try on failure.

    ``val_errors``: the float and the int8 model's errors of ``val_w``."""
    err_f_val, err_q_val = val_errors
    record = run.record
    recon = KerasReconstructor(run.model)
    statistic = record.config.threshold.statistic

    def float_errors(w: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        return reconstruction_error(w, recon.reconstruct(w), statistic)[0]

    thr_f = record.threshold.alert_threshold
    sized = sized_faults(val_w, float_errors, thr_f, seed=record.seed)
    ps = parity_set(val_w, sized, labelled_windows(run.arrays))
    positives = ps.windows[ps.normal :]
    err_f = np.concatenate([err_f_val, float_errors(positives)])
    err_q_pos, _ = reconstruction_error(positives, int8.reconstruct(positives), statistic)
    spec, failures = compare(
        ps,
        err_f,
        np.concatenate([err_q_val, err_q_pos]),
        threshold_float=thr_f,
        threshold_int8=thr_q.alert_threshold,
        clipped=input_clip_fraction(int8_bytes, val_w),
    )
    log.info(
        "parity on %d windows (%d sized faults, %d labelled): F1 float %.3f int8 %.3f, "
        "ROC-AUC float %.4f int8 %.4f",
        spec.windows,
        ps.synthetic,
        ps.labelled,
        spec.f1_float,
        spec.f1_int8,
        spec.auc_float,
        spec.auc_int8,
    )
    if not failures:
        return spec
    rep = min(run.arrays["representative"].shape[0], DEFAULT_MAX_SAMPLES)
    msg = refusal(
        failures,
        spec,
        kind=record.autoencoder.kind,
        representative=rep,
        quant_epochs=record.autoencoder.quantization_aware_epochs_run,
    )
    if not force:
        raise ExportError(msg)
    log.warning("%s\nexporting anyway (--force)", msg)
    return spec.model_copy(update={"forced": True})


def refusal(
    failures: list[str],
    spec: ParitySpec,
    *,
    kind: str,
    representative: int,
    quant_epochs: int,
) -> str:
    """The gate's refusal: what failed, on what, and what to try."""
    clipped = spec.input_clipped_fraction or 0.0
    lines = [
        "int8 parity gate failed: " + "; ".join(failures),
        f"  compared on {spec.windows} held-out windows, {spec.positives} anomalous "
        f"({spec.synthetic} synthetic faults sized to {SIZED_BAND[0]}-{SIZED_BAND[1]} x the "
        f"float alert threshold, {spec.labelled} labelled); each model at its own alert "
        f"threshold (limits: F1 {MAX_F1_DROP} when int8's extra mistakes have p < "
        f"{SIGNIFICANCE}, ROC-AUC {MAX_AUC_DROP})",
        "  what to try:",
    ]
    if clipped > CLIP_HINT_FRACTION:
        lines.append(
            f"  - {clipped:.1%} of the held-out values lie outside the int8 input range set by "
            f"the {representative} representative training windows, and saturate: train on "
            "wider history (every operating mode, its extremes) so the ranges cover them"
        )
    if kind == "dense":
        lines.append(
            f"  - more quantization-aware fine-tuning (this run: {quant_epochs} epochs): "
            "[autoencoder] quantization_aware_epochs in the training config, then fit again"
        )
    lines += [
        "  - a longer training history covering every operating mode: int8 ranges are "
        "calibrated on the representative windows taken from it",
        f"  - another model kind (this one is {kind!r}; dense compounds the least rounding "
        "error, conv the most)",
        "  - --force exports anyway (recorded in the manifest as parity.forced)",
    ]
    return "\n".join(lines)
