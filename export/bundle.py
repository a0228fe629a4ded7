"""``export bundle``: quantize, check int8-vs-float parity, recalibrate, pack and sign.

Reads a trainer run directory; writes a bundle directory (see ``docs/bundle-format.md``). The
alert threshold is the float model's calibration scaled by how much larger the int8 model's
held-out errors run in their tail, and the screen threshold is set on the int8 model's
detections, because the gateway runs the int8 model, not the float one. The bundle is
assembled in a temporary sibling directory and renamed into place, so a failed export leaves
nothing half-written.
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

from edge_agent.bundle.manifest import (
    SCHEMA_VERSION,
    AutoencoderSpec,
    ForestSpec,
    Manifest,
)
from edge_agent.bundle.verify import sha256_hex
from edge_agent.detect.autoencoder import Int8Autoencoder
from edge_agent.detect.cascade import reconstruction_error
from export.errors import ExportError
from export.keys import load_private_key
from export.parity_gate import run_gate
from export.run_dir import load_run
from export.sign import file_digests, utc_stamp, write_signed
from export.train_weights import learning_files
from trainer.calibrate import screen_threshold, tail_error_ratio
from trainer.fit import FOREST_FILE, KerasReconstructor, features_of_windows
from trainer.quant_aware import int8_calibration_windows

log = logging.getLogger("export.bundle")

INT8_FILE = "model_int8.tflite"
VARIANTS = ("edgetpu", "onnx")


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
    rep = int8_calibration_windows(arrays["representative"], seed=record.seed)
    int8_bytes = convert_int8(model, rep, seed=record.seed)
    int8 = Int8Autoencoder(int8_bytes)
    log.info("int8 model: %d bytes, interpreter %s", len(int8_bytes), int8.backend)

    # The float calibration carried over to int8 by their error ratio in the held-out tail
    # (trainer.calibrate.tail_error_ratio), then the gate.
    val_w = arrays["val_windows"].astype(np.float32)
    statistic = cfg.threshold.statistic
    err_f_val, _ = reconstruction_error(
        val_w, KerasReconstructor(model).reconstruct(val_w), statistic
    )
    err_q_val, _ = reconstruction_error(val_w, int8.reconstruct(val_w), statistic)
    thr_q = record.threshold.scaled(tail_error_ratio(err_f_val, err_q_val))
    parity = run_gate(run, int8, int8_bytes, val_w, (err_f_val, err_q_val), thr_q, force=force)

    # The screen is set on trainer fit's anomalous windows, as fit set it for the float model.
    screen_pos = screen_positives(arrays)
    err_q_pos, _ = reconstruction_error(screen_pos, int8.reconstruct(screen_pos), statistic)
    pos_forest = forest.screen_score(features_of_windows(screen_pos, forest), screen_pos)
    screen = screen_threshold(
        pos_forest, err_q_pos >= thr_q.alert_threshold, keep_recall=cfg.cascade.keep_recall
    )
    pw = arrays["parity_windows"].astype(np.float32)

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
                envelope=forest.envelope is not None,
                residual=forest.residual is not None,
            ),
            autoencoder=AutoencoderSpec(file=INT8_FILE, kind=record.autoencoder.kind),
            threshold=thr_q,
            alerts=record.alerts,
            training=record.training_spec(),
            parity=parity,
            variants=variant_info,
            files=file_digests(tmp, files),
            learning=learning,
            baseline=record.baseline,
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


def screen_positives(arrays: dict[str, npt.NDArray[Any]]) -> npt.NDArray[np.float32]:
    """trainer fit's anomalous windows (synthetic, then labelled) that set the screen."""
    pw = arrays["parity_windows"].astype(np.float32)
    return np.ascontiguousarray(pw[arrays["parity_labels"] == 1])


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
