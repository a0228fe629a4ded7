"""The int8 parity gate on real models: real training (the session's run), real int8
conversion, real TFLite inference.

It must pass the session's well-quantized model with an F1 that means something (neither 0
nor 1 for float), and refuse the same model quantized from a representative set that is
deliberately too narrow (its int8 ranges clip ordinary values), saying what to try.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import export.bundle
from export.bundle import build_bundle
from export.errors import ExportError
from export.parity import RULE
from export.parity_gate import labelled_windows
from trainer.fit import CALIBRATION_FILE

# The representative windows scaled by this: the int8 input range then covers half of the
# normal values' span, so ordinary values saturate. A user gets the same from a history that
# covers one quiet operating mode only.
NARROW_REPRESENTATIVE = 0.5


def edited_run(trained_run: Path, dst: Path, *, rep_scale: float = 1.0) -> Path:
    """A copy of the session's run without its labelled windows (the gate then rests on the
    sized synthetic faults alone, as on SKAB), its representative windows scaled."""
    shutil.copytree(trained_run, dst)
    with np.load(dst / CALIBRATION_FILE) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["representative"] = arrays["representative"] * np.float32(rep_scale)
    arrays["labelled_windows"] = arrays["labelled_windows"][:0]
    np.savez(dst / CALIBRATION_FILE, **arrays)
    return dst


def test_the_session_bundle_passed_a_gate_that_could_fail(bundle: Path) -> None:
    parity = json.loads((bundle / "manifest.json").read_text())["parity"]
    assert parity["rule"] == RULE
    assert parity["forced"] is False
    assert parity["synthetic"] > 100
    assert parity["labelled"] > 0  # the session's run was fitted with labels
    assert parity["positives"] == parity["synthetic"] + parity["labelled"]
    # Meaningful: the float model neither catches every anomalous window nor none.
    assert 0.2 < parity["f1_float"] < 0.95
    assert parity["f1_float"] - parity["f1_int8"] <= parity["max_f1_drop"]
    assert parity["auc_float"] - parity["auc_int8"] <= parity["max_auc_drop"]
    assert parity["input_clipped_fraction"] == 0.0


def test_sized_faults_alone_pass_a_good_model(
    trained_run: Path, keys: Path, tmp_path: Path
) -> None:
    run = edited_run(trained_run, tmp_path / "run")
    m = build_bundle(run, tmp_path / "b", keys / "signing.key", variants=())
    p = m.parity
    assert (p.labelled, p.forced) == (0, False)
    assert 0.3 < p.f1_float < 0.9
    assert p.f1_float - p.f1_int8 <= p.max_f1_drop  # type: ignore[operator]


def test_a_model_quantized_from_too_narrow_data_is_refused(
    trained_run: Path, keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Calibrated on the narrow windows alone: export's synthetic faults (which widen the
    # ranges, see the next test) would otherwise mend what this test breaks on purpose.
    monkeypatch.setattr(
        export.bundle, "int8_calibration_windows", lambda rep, seed: rep.astype(np.float32)
    )
    run = edited_run(trained_run, tmp_path / "run", rep_scale=NARROW_REPRESENTATIVE)
    with pytest.raises(ExportError) as refused:
        build_bundle(run, tmp_path / "b", keys / "signing.key", variants=())
    msg = str(refused.value)
    assert msg.startswith("int8 parity gate failed: F1 drops")
    assert "what to try" in msg
    assert "outside the int8 input range" in msg
    assert "[autoencoder] quantization_aware_epochs" in msg  # the dense kind can be fine-tuned
    assert "--force" in msg
    assert not (tmp_path / "b").exists()
    # --force exports it, and the manifest says so.
    m = build_bundle(run, tmp_path / "b", keys / "signing.key", variants=(), force=True)
    assert m.parity.forced
    assert m.parity.f1_float - m.parity.f1_int8 > m.parity.max_f1_drop  # type: ignore[operator]
    assert m.parity.input_clipped_fraction > 0.01  # type: ignore[operator]


def test_calibrating_on_faults_too_keeps_their_values_in_range(
    trained_run: Path, keys: Path, tmp_path: Path
) -> None:
    """The windows int8 ranges come from: the representative ones and a synthetic fault made
    from each, so the values that make a fault are not clipped by ranges set on normal alone."""
    with np.load(trained_run / CALIBRATION_FILE) as z:
        rep = z["representative"]
    cal = export.bundle.int8_calibration_windows(rep, seed=0)
    assert cal.shape == (2 * rep.shape[0], *rep.shape[1:])
    np.testing.assert_array_equal(cal[: rep.shape[0]], rep)
    assert np.abs(cal).max() > np.abs(rep).max()  # the faults reach past normal
    m = build_bundle(trained_run, tmp_path / "b", keys / "signing.key", variants=())
    assert m.parity.input_clipped_fraction == 0.0


def test_labelled_windows_of_a_run_written_before_they_were_stored_apart() -> None:
    synthetic = np.full((3, 4, 2), 1.0, np.float32)
    labelled = np.full((2, 4, 2), 2.0, np.float32)
    normal = np.zeros((5, 4, 2), np.float32)
    old = {
        "parity_windows": np.concatenate([normal, synthetic, labelled]),
        "parity_labels": np.array([0] * 5 + [1] * 5, np.int8),
        "synthetic_kinds": np.array(["spike"] * 3),
    }
    np.testing.assert_array_equal(labelled_windows(old), labelled)
    assert labelled_windows(old | {"labelled_windows": labelled[:1]}).shape == (1, 4, 2)
