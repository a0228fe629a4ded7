"""The typed run record: what ``trainer fit`` writes is what ``export`` and ``evaluate`` read.

Uses the session's real trained run (``trained_run``); broken records are copies of its
run.json with one thing changed, read back through ``export.run_dir``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from export.errors import ExportError
from export.run_dir import LoadedRun, load_run, read_record
from trainer.evaluate.run import manifest_from_run
from trainer.run_record import RUN_FILE, RunRecord


def test_fit_writes_a_record_that_round_trips(trained_run: Path) -> None:
    text = (trained_run / RUN_FILE).read_text()
    record = RunRecord.model_validate(json.loads(text))
    # The file is exactly the record's own serialization: nothing outside the model.
    assert record.to_json() == text
    assert record.forest.file == "forest.npz"
    assert record.channels[0].name == "pressure_bar"
    assert 0.0 <= record.validation.cascade_recall <= record.validation.stage2_recall <= 1.0
    assert record.config.autoencoder.kind == record.autoencoder.kind


def test_load_run_is_typed(trained_run: Path) -> None:
    run = load_run(trained_run)
    assert isinstance(run, LoadedRun)
    assert isinstance(run.record, RunRecord)
    assert run.forest.n_trees == run.record.forest.n_trees
    assert run.arrays["representative"].shape[1:] == (
        run.record.window.length,
        len(run.record.channels),
    )
    # A float run scores through the same manifest a bundle would carry.
    m = manifest_from_run(run.record)
    assert m.channel_names == [c.name for c in run.record.channels]
    assert m.threshold == run.record.threshold


def _broken_copy(trained_run: Path, tmp_path: Path, change: dict[str, object]) -> Path:
    doc = json.loads((trained_run / RUN_FILE).read_text())
    for dotted, value in change.items():
        *parents, last = dotted.split(".")
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is None:
            del node[last]
        else:
            node[last] = value
    path = tmp_path / RUN_FILE
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"validation.windows": "many"}, "validation.windows: Input should be a valid integer"),
        ({"seed": None}, "seed: Field required"),
        ({"learning_rate": 0.1}, "learning_rate: Extra inputs are not permitted"),
        ({"channels.0.scale": -1.0}, "channels.0.scale: Input should be greater than 0"),
        ({"config.autoencoder.kind": "gru"}, "config.autoencoder.kind: Input should be"),
    ],
)
def test_an_invalid_record_names_the_file_and_field(
    trained_run: Path, tmp_path: Path, change: dict[str, object], expected: str
) -> None:
    path = _broken_copy(trained_run, tmp_path, change)
    with pytest.raises(ExportError) as err:
        read_record(path)
    assert str(err.value).startswith(f"{path}: invalid run record")
    assert expected in str(err.value)


def test_a_broken_run_dir_fails_before_tensorflow_loads(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / RUN_FILE).write_text("{")
    with pytest.raises(ExportError, match=f"{run / RUN_FILE}: not JSON"):
        load_run(run)
    (run / RUN_FILE).unlink()
    with pytest.raises(ExportError, match=f"not a trainer run directory \\({RUN_FILE} missing"):
        load_run(run)


def test_export_cli_reports_an_invalid_record(
    trained_run: Path, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from export.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    doc = json.loads((run / RUN_FILE).read_text())
    doc["threshold"]["alert_threshold"] = 0
    (run / RUN_FILE).write_text(json.dumps(doc))
    out = tmp_path / "bundle"
    args = ["bundle", "--run", str(run), "--out", str(out), "--key", str(keys / "signing.key")]
    assert main([*args, "--variants", "none"]) == 2
    err = capsys.readouterr().err
    assert f"error: {run / RUN_FILE}: invalid run record" in err
    assert "threshold.alert_threshold: Input should be greater than 0" in err
    assert not out.exists()
