"""Tests for trainer.evaluate.per_kind and the report's per-kind table, with known answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from trainer.evaluate.kind_table import per_kind_section
from trainer.evaluate.metrics import detection_delays
from trainer.evaluate.per_kind import (
    delay_stats,
    per_kind_detection,
    read_kind_column,
)


def _episodes(n: int, spans: list[tuple[int, int, str]]) -> tuple[np.ndarray, np.ndarray]:
    y = np.zeros(n, dtype=bool)
    kinds = np.full(n, "normal", dtype=object)
    for start, stop, kind in spans:
        y[start:stop] = True
        kinds[start:stop] = kind
    return y, kinds.astype(str)


def test_a_kind_never_caught_has_zero_recall_and_no_delay() -> None:
    y, kinds = _episodes(100, [(10, 20, "drift"), (40, 43, "spike"), (60, 63, "spike")])
    pred = np.zeros(100, dtype=bool)
    pred[14] = True  # drift caught 4 samples in; neither spike caught
    pred[50] = True  # a false alarm between the spikes catches nothing
    by_kind = {k.kind: k.delays for k in per_kind_detection(y, pred, kinds, period_s=2.0)}
    assert list(by_kind) == ["drift", "spike"]
    assert (by_kind["drift"].episodes, by_kind["drift"].caught) == (1, 1)
    assert by_kind["drift"].median_samples == 4.0
    assert by_kind["drift"].median_s == 8.0
    spike = by_kind["spike"]
    assert (spike.episodes, spike.caught, spike.recall) == (2, 0, 0.0)
    assert math.isnan(spike.median_samples)
    assert math.isnan(spike.p90_s)


def test_an_alarm_before_the_episode_is_not_an_early_catch() -> None:
    y, kinds = _episodes(30, [(10, 20, "stuck")])
    pred = np.zeros(30, dtype=bool)
    pred[5:12] = True  # on before the episode, still on 1 sample into it
    (rec,) = per_kind_detection(y, pred, kinds, period_s=1.0)
    assert rec.delays.caught == 1
    assert rec.delays.median_samples == 0.0
    pred[5:10] = True
    pred[10:] = False
    (rec,) = per_kind_detection(y, pred, kinds, period_s=1.0)
    assert rec.delays.caught == 0


def test_p90_over_a_known_set_of_delays() -> None:
    # Ten episodes of 20 samples, caught after 0, 1, ..., 9 samples.
    spans = [(30 * i, 30 * i + 20, "level_shift") for i in range(10)]
    y, _kinds = _episodes(300, spans)
    pred = np.zeros(300, dtype=bool)
    for i, (start, _, _) in enumerate(spans):
        pred[start + i] = True
    stats = delay_stats(y, pred, period_s=0.5)
    assert stats.episodes == stats.caught == 10
    assert stats.median_samples == pytest.approx(4.5)
    # numpy's linear percentile of 0..9 at 90 %: 0.9 * 9 = 8.1.
    assert stats.p90_samples == pytest.approx(8.1)
    assert stats.p90_s == pytest.approx(4.05)
    assert stats.max_samples == 9.0
    d = detection_delays(y, pred, period_s=0.5)
    assert d["delay_p90_samples"] == pytest.approx(8.1)
    assert d["delay_median_s"] == pytest.approx(2.25)


def test_two_kinds_back_to_back_are_two_episodes() -> None:
    y, kinds = _episodes(40, [(10, 15, "drift"), (15, 20, "spike")])
    pred = np.zeros(40, dtype=bool)
    pred[17] = True
    by_kind = {k.kind: k.delays for k in per_kind_detection(y, pred, kinds, 1.0)}
    assert by_kind["drift"].caught == 0
    assert by_kind["spike"].caught == 1
    assert by_kind["spike"].median_samples == 2.0


def test_records_serialise_to_json_with_episode_recall() -> None:
    y, kinds = _episodes(50, [(10, 20, "noise_burst"), (30, 40, "noise_burst")])
    pred = np.zeros(50, dtype=bool)
    pred[12] = True
    (rec,) = per_kind_detection(y, pred, kinds, 1.0)
    d = json.loads(json.dumps(rec.as_dict()))
    assert d["kind"] == "noise_burst"
    assert d["episode_recall"] == 0.5
    html = per_kind_section({"cascade": [rec.as_dict()]})
    assert "<td>noise_burst</td>" in html
    assert "50%" in html
    assert "n/a" not in html


def test_bad_input_is_named() -> None:
    y = np.zeros(10, dtype=bool)
    with pytest.raises(ValueError, match="differ in length"):
        per_kind_detection(y, y, np.array(["normal"] * 9), 1.0)
    with pytest.raises(ValueError, match="period_s"):
        per_kind_detection(y, y, np.array(["normal"] * 10), 0.0)
    with pytest.raises(ValueError, match="kinds must be 1-D"):
        per_kind_detection(y, y, np.zeros((10, 1)), 1.0)


def test_read_kind_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("timestamp,a,anomaly,fault_kind\n0,1,0,normal\n1,2,1,spike\n")
    assert read_kind_column(path).tolist() == ["normal", "spike"]  # type: ignore[union-attr]
    assert read_kind_column(path, "kind") is None
    path.write_text("timestamp,a,fault_kind\n0,1\n")
    with pytest.raises(ValueError, match=r"d.csv:2: row has no 'fault_kind' field"):
        read_kind_column(path)
