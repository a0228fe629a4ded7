"""Detection per fault kind and detection delay, for ``trainer evaluate`` and the benches.

Sits beside :mod:`trainer.evaluate.metrics` in the desktop evaluation step: given the labels,
the alarms and, where the labelled data names it, each row's fault kind (the simulator writes a
``fault_kind`` column: ``normal`` outside episodes, the kind's name inside), it answers the
operator's questions "is every kind of fault caught, and how fast". An episode is a contiguous
run of anomalous rows of one kind; it is caught when an alarm is raised inside it, and its delay
is the number of samples from its first row to that first alarm (an alarm before the episode
starts is a false alarm, not an early catch). The delays come from
:func:`trainer.evaluate.metrics.detection_delays`, and ``bench/simulator.py`` and
``trainer evaluate`` both call :func:`per_kind_detection`: one implementation.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from trainer.evaluate.metrics import _as_mask, _check_same_length, detection_delays

#: The simulator's fault-kind column and its value outside episodes.
DEFAULT_KIND_COL = "fault_kind"
NORMAL_KIND = "normal"


@dataclass(frozen=True)
class DelayStats:
    """Detection delays of the caught episodes, in samples and in seconds (NaN if none caught)."""

    episodes: int
    caught: int
    median_samples: float
    p90_samples: float
    max_samples: float
    median_s: float
    p90_s: float
    max_s: float

    @property
    def recall(self) -> float:
        """Share of episodes caught (by episode, not by row); NaN without any episode."""
        return self.caught / self.episodes if self.episodes else float("nan")

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "episode_recall": self.recall}


@dataclass(frozen=True)
class KindDetection:
    """How one fault kind was detected: its episodes and their delays."""

    kind: str
    delays: DelayStats

    def as_dict(self) -> dict[str, float | str]:
        return {"kind": self.kind, **self.delays.as_dict()}


def _stats(delays: dict[str, float]) -> DelayStats:
    return DelayStats(
        episodes=int(delays["n_segments"]),
        caught=int(delays["n_detected"]),
        median_samples=delays["delay_median_samples"],
        p90_samples=delays["delay_p90_samples"],
        max_samples=delays["delay_max_samples"],
        median_s=delays["delay_median_s"],
        p90_s=delays["delay_p90_s"],
        max_s=delays["delay_max_s"],
    )


def delay_stats(y_true: np.ndarray, y_pred: np.ndarray, period_s: float) -> DelayStats:
    """Delays over every anomalous episode of ``y_true`` (whatever its kind)."""
    return _stats(detection_delays(y_true, y_pred, period_s))


def per_kind_detection(
    y_true: np.ndarray, y_pred: np.ndarray, kinds: np.ndarray, period_s: float
) -> list[KindDetection]:
    """One record per fault kind present among the anomalous rows, in order of first appearance.

    ``kinds`` names each row's kind (strings, or integer codes); an episode is a run of
    anomalous rows of the same kind, so two kinds back to back are two episodes.
    """
    if not period_s > 0:
        raise ValueError(f"period_s must be positive, got {period_s}")
    truth, pred = _as_mask(y_true, "y_true"), _as_mask(y_pred, "y_pred")
    names = np.asarray(kinds)
    if names.ndim != 1:
        raise ValueError(f"kinds must be 1-D, got shape {names.shape}")
    _check_same_length(y_true=truth, y_pred=pred, kinds=names)
    present = list(dict.fromkeys(names[truth].tolist()))
    return [
        KindDetection(
            kind=str(k), delays=_stats(detection_delays(truth & (names == k), pred, period_s))
        )
        for k in present
    ]


def read_kind_column(
    path: str | Path, column: str = DEFAULT_KIND_COL
) -> npt.NDArray[np.str_] | None:
    """The named column of a CSV file as strings, or None when the header has no such column."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or column not in header:
            return None
        idx = header.index(column)
        values: list[str] = []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if idx >= len(row):
                raise ValueError(f"{path}:{line_no}: row has no {column!r} field")
            values.append(row[idx].strip())
    return np.asarray(values, dtype=np.str_)
