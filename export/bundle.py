"""``export bundle``: quantize, check int8-vs-float parity, recalibrate, pack and sign.

Reads a trainer run directory; writes a bundle directory (see ``docs/bundle-format.md``). The
int8 model's own errors recalibrate the alert and screen thresholds, because the gateway runs
the int8 model, not the float one. The bundle is assembled in a temporary sibling directory and
renamed into place, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import f1_score, roc_auc_score

from edge_agent.bundle.manifest import (
    SCHEMA_VERSION,
    AutoencoderSpec,
    ForestSpec,
    Manifest,
    ParitySpec,
)
from edge_agent.bundle.verify import sha256_hex
from edge_agent.detect.autoencoder import Int8Autoencoder
from edge_agent.detect.cascade import reconstruction_error
from export.errors import ExportError
from export.keys import load_private_key
from export.run_dir import load_run
from export.sign import file_digests, utc_stamp, write_signed
from export.train_weights import learning_files
from trainer.calibrate import calibrate_threshold, screen_threshold
from trainer.fit import FOREST_FILE, KerasReconstructor, features_of_windows

log = logging.getLogger("export.bundle")

INT8_FILE = "model_int8.tflite"
# The parity gate: the int8 model may lose at most this much against the float model.
MAX_F1_DROP = 0.02
MAX_AUC_DROP = 0.01
VARIANTS = ("edgetpu", "onnx")


def _auc(labels: npt.NDArray[np.int8], score: npt.NDArray[np.float64]) -> float:
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, score))


def build_bundle(
    run_dir: Path,
    out: Path,
    key_path: Path,
    *,
    model_version: str | None = None,
    variants: tuple[str, ...] = VARIANTS,
    force: bool = False,
    overwrite: bool = False,
) -> Manifest:
    from export.tflite_int8 import convert_int8

    key = load_private_key(key_path)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; pass --overwrite to replace it")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ExportError(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    run = load_run(run_dir)
    record, model, forest, arrays = run.record, run.model, run.forest, run.arrays
    cfg = record.config
    rep = arrays["representative"].astype(np.float32)
    int8_bytes = convert_int8(model, rep, seed=record.seed)
    int8 = Int8Autoencoder(int8_bytes)
    log.info("int8 model: %d bytes, interpreter %s", len(int8_bytes), int8.backend)

    # Parity on held-out normal windows plus labelled/synthetic anomalous ones.
    pw = arrays["parity_windows"].astype(np.float32)
    labels = arrays["parity_labels"].astype(np.int8)
    err_f, _ = reconstruction_error(pw, KerasReconstructor(model).reconstruct(pw))
    err_q, _ = reconstruction_error(pw, int8.reconstruct(pw))
    normal = labels == 0
    thr_f = record.threshold
    thr_q = calibrate_threshold(
        err_q[normal], cfg.threshold, history_samples=record.history_samples
    )
    f1_f = float(f1_score(labels, err_f >= thr_f.alert_threshold, zero_division=0.0))
    f1_q = float(f1_score(labels, err_q >= thr_q.alert_threshold, zero_division=0.0))
    auc_f, auc_q = _auc(labels, err_f), _auc(labels, err_q)
    rel = float(np.mean(np.abs(err_q - err_f)) / max(float(np.mean(err_f)), 1e-12))
    parity = ParitySpec(
        windows=int(labels.size),
        positives=int(labels.sum()),
        f1_float=f1_f,
        f1_int8=f1_q,
        auc_float=auc_f,
        auc_int8=auc_q,
        error_rel_mae=rel,
        forced=False,
    )
    failures = []
    if f1_f - f1_q > MAX_F1_DROP:
        failures.append(f"F1 drops {f1_f - f1_q:.3f} (float {f1_f:.3f}, int8 {f1_q:.3f})")
    if auc_f - auc_q > MAX_AUC_DROP:
        failures.append(f"ROC-AUC drops {auc_f - auc_q:.3f} (float {auc_f:.3f}, int8 {auc_q:.3f})")
    if failures:
        msg = "int8 parity gate failed: " + "; ".join(failures)
        if not force:
            raise ExportError(msg + " (limits: F1 0.02, AUC 0.01; --force exports anyway)")
        log.warning("%s; exporting anyway (--force)", msg)
        parity = parity.model_copy(update={"forced": True})

    pos = ~normal
    pos_forest = forest.score(features_of_windows(np.ascontiguousarray(pw[pos]), forest))
    screen = screen_threshold(
        pos_forest, err_q[pos] >= thr_q.alert_threshold, keep_recall=cfg.cascade.keep_recall
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        files: dict[str, bytes] = {
            INT8_FILE: int8_bytes,
            FOREST_FILE: (run_dir / FOREST_FILE).read_bytes(),
        }
        learning, weight_files = learning_files(model, record.autoencoder.kind)
        files.update(weight_files)
        variant_info = _build_variants(variants, model, rep, pw, tmp)
        for name in (tmp / "variants").iterdir() if (tmp / "variants").exists() else []:
            if name.is_file():
                files[name.name] = name.read_bytes()
        shutil.rmtree(tmp / "variants", ignore_errors=True)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        version = model_version or f"{now:%Y%m%dT%H%M%SZ}-{sha256_hex(int8_bytes)[:8]}"
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            model_version=version,
            created_at=utc_stamp(now),
            channels=record.channels,
            sampling=record.sampling,
            window=record.window,
            forest=ForestSpec(
                file=FOREST_FILE,
                n_trees=forest.n_trees,
                max_samples=forest.max_samples,
                screen_threshold=screen,
            ),
            autoencoder=AutoencoderSpec(file=INT8_FILE, kind=record.autoencoder.kind),
            threshold=thr_q,
            alerts=record.alerts,
            training=record.training_spec(),
            parity=parity,
            variants=variant_info,
            files=file_digests(tmp, files),
            learning=learning,
        )
        write_signed(tmp, manifest, key)
        # mkdtemp makes the directory private; a bundle/run is meant to be readable.
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _build_variants(
    variants: tuple[str, ...],
    model: Any,
    rep: npt.NDArray[np.float32],
    sample: npt.NDArray[np.float32],
    tmp: Path,
) -> dict[str, dict[str, str | int | float | bool | None]]:
    """Build accelerator variants into ``tmp/variants``; returns their manifest entries."""
    info: dict[str, dict[str, str | int | float | bool | None]] = {}
    vdir = tmp / "variants"
    vdir.mkdir()
    if "edgetpu" in variants:
        from export.edgetpu import build_edgetpu

        res = build_edgetpu(model, rep, vdir)
        info["edgetpu"] = _flat(res)
    if "onnx" in variants:
        from export.onnx_tensorrt import build_onnx

        res = build_onnx(model, sample[: min(256, sample.shape[0])], vdir)
        info["onnx"] = _flat(res)
    # Compiler logs and the like are not part of the signed payload.
    for p in vdir.iterdir():
        if p.suffix not in (".tflite", ".onnx"):
            p.unlink()
    return info


def _flat(res: dict[str, Any]) -> dict[str, str | int | float | bool | None]:
    out: dict[str, str | int | float | bool | None] = {}
    for k, v in res.items():
        if v is None or isinstance(v, str | int | float | bool):
            out[k] = v
        else:
            out[k] = json.dumps(v, default=str)
    return out
