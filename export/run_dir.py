"""Reading a trainer run directory: the typed run record, the float model, forest and arrays.

The desk's way into what ``trainer fit`` wrote (``trainer.fit`` names the files,
``trainer.run_record`` types ``run.json``). Used by ``export bundle`` to quantize and pack a
run, and by ``trainer evaluate`` to score a float run. A directory that is not a run, or a
run.json that does not validate, is an :class:`ExportError` naming the file and the fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from edge_agent.detect.forest import FlatForest
from export.errors import ExportError, describe_invalid
from trainer.fit import CALIBRATION_FILE, FOREST_FILE, MODEL_FILE
from trainer.run_record import RUN_FILE, RunRecord

RUN_FILES = (RUN_FILE, FOREST_FILE, MODEL_FILE, CALIBRATION_FILE)


@dataclass(frozen=True)
class LoadedRun:
    """A run directory in memory."""

    record: RunRecord
    model: Any  # the float Keras autoencoder
    forest: FlatForest
    arrays: dict[str, npt.NDArray[Any]]  # calibration.npz: representative, parity windows...


def read_record(path: Path) -> RunRecord:
    """Parse and validate ``run.json`` at ``path``; every problem is named with its field."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path}: run record not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: not JSON ({exc})") from None
    try:
        return RunRecord.model_validate(doc)
    except ValidationError as exc:
        raise ExportError(describe_invalid(path, "run record", exc)) from None


def load_run(run_dir: Path) -> LoadedRun:
    """Load every file of a run directory; TensorFlow is imported here, not at module import."""
    for name in RUN_FILES:
        if not (run_dir / name).is_file():
            raise ExportError(f"{run_dir}: not a trainer run directory ({name} missing)")
    record = read_record(run_dir / RUN_FILE)
    import keras

    model = keras.saving.load_model(run_dir / MODEL_FILE)
    forest = FlatForest.load(run_dir / FOREST_FILE)
    with np.load(run_dir / CALIBRATION_FILE, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return LoadedRun(record=record, model=model, forest=forest, arrays=arrays)
