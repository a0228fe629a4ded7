"""The new run of a round: base run + aggregated weights, recalibrated, and exportable.

Uses the session's real trained run and keys; the new run is packed by the real
``export bundle`` and verified as a gateway would.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle.verify import verify_bundle
from edge_agent.learn.bundle_weights import load_train_weights
from edge_agent.learn.weights import WeightSet
from export.cli import main as export_main
from export.run_dir import load_run
from export.train_weights import keras_weight_set
from trainer.federate.run_out import (
    BaseRun,
    build_new_run,
    load_base,
    write_new_run,
)
from trainer.fit import CALIBRATION_FILE, FOREST_FILE
from trainer.run_record import RUN_FILE, FederationSummary, RunRecord


def _summary(base: BaseRun, weights: WeightSet) -> FederationSummary:
    return FederationSummary(
        round_id="r1",
        clients_accepted=3,
        clients_refused=1,
        samples=1200,
        rule="fedavg",
        server_opt="none",
        base_fingerprint=base.fingerprint,
        weights_fingerprint=weights.fingerprint(),
    )


@pytest.fixture(scope="module")
def base(trained_run: Path) -> BaseRun:
    return load_base(trained_run)


def test_zero_delta_reproduces_the_base_thresholds(base: BaseRun, tmp_path: Path) -> None:
    out = tmp_path / "same"
    record, model = build_new_run(base, base.weights, _summary(base, base.weights), seconds=1)
    write_new_run(out, base, record, model, extra_files={"federate.json": b"{}\n"})
    # Same weights, same calibration windows, the trainer's own calibration: same thresholds.
    base_record = base.run.record
    assert record.threshold.alert_threshold == pytest.approx(
        base_record.threshold.alert_threshold, rel=1e-6
    )
    assert record.forest.screen_threshold == pytest.approx(
        base_record.forest.screen_threshold, rel=1e-6
    )
    assert (out / FOREST_FILE).read_bytes() == (base.path / FOREST_FILE).read_bytes()
    assert (out / "federate.json").read_bytes() == b"{}\n"


def test_new_weights_land_in_the_run_and_export_to_a_bundle(
    base: BaseRun, trained_run: Path, keys: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    flat = base.weights.flat()
    step = rng.normal(0.0, 1e-3, flat.size).astype(np.float32)
    new = WeightSet.from_flat(base.weights, flat + step)
    out = tmp_path / "new"
    record, model = build_new_run(base, new, _summary(base, new), seconds=2.5)
    write_new_run(out, base, record, model, extra_files={})

    text = (out / RUN_FILE).read_text()
    record = RunRecord.model_validate(json.loads(text))
    assert record.to_json() == text
    assert record.federation is not None
    assert record.federation.weights_fingerprint == new.fingerprint()
    assert record.federation.base_fingerprint == base.fingerprint
    loaded = load_run(out)
    assert keras_weight_set(loaded.model).fingerprint() == new.fingerprint()
    with np.load(out / CALIBRATION_FILE) as a, np.load(trained_run / CALIBRATION_FILE) as b:
        assert a.files == b.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
    # A fitted run.json has no federation key: older readers and byte-equal records stay.
    assert "federation" not in json.loads((trained_run / RUN_FILE).read_text())

    bundle = tmp_path / "bundle"
    key = keys / "signing.key"
    argv = ["bundle", "--run", str(out), "--out", str(bundle), "--key", str(key)]
    assert export_main([*argv, "--variants", "none"]) == 0
    verified = verify_bundle(bundle, keys / "signing.pub")
    assert verified.manifest.channel_names == [c.name for c in record.channels]
    # The gateway's base for the next round is exactly what this round produced.
    shipped = load_train_weights(bundle, verified.manifest)
    assert shipped is not None
    assert shipped.fingerprint() == new.fingerprint()


def test_refuses_to_overwrite(base: BaseRun, tmp_path: Path) -> None:
    out = tmp_path / "full"
    out.mkdir()
    (out / "x").write_text("keep me")
    record, model = build_new_run(base, base.weights, _summary(base, base.weights), seconds=0)
    with pytest.raises(FileExistsError, match="not empty"):
        write_new_run(out, base, record, model, extra_files={})
    with pytest.raises(ValueError, match="cannot replace its base run"):
        write_new_run(base.path, base, record, model, extra_files={}, overwrite=True)
    assert (out / "x").read_text() == "keep me"


def test_weights_that_do_not_fit_are_named(base: BaseRun) -> None:
    wrong = WeightSet(("dense_0/kernel",), (np.zeros((2, 2), np.float32),))
    with pytest.raises(ValueError, match="weight sets differ"):
        build_new_run(base, wrong, _summary(base, base.weights), seconds=0)
