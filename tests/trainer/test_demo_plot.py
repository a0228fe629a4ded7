"""``trainer.demo_plot``: the live demo's PNG from a ``watch --record`` timeline and a truth
file, both written by the code that writes them in the demo (``Recorder``/``record_line`` and
the truth line format)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from edge_agent.watch.follow import SeenEvent
from edge_agent.watch.record import Recorder, read_record, record_line
from edge_agent.watch.scrape import AgentReading
from edge_agent.watch.truth import read_truth
from trainer.cli import main as trainer_main
from trainer.demo_plot import RATIO_AXIS_MAX, draw, main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T0 = 1_700_000_000.0
SECONDS = 120
FAULT = (40, 70)  # s: a level shift on oil_temp_c
SPIKE_RATIO = 12.0  # beyond the axis: it is cut


def _reading(i: int, ratio: float, alert: bool) -> AgentReading:
    return AgentReading(
        at=float(i), rows=float(i), windows=float(i), stage2=0.0, score_ratio=ratio,
        alert=alert, shares={"oil_temp_c": 0.8, "pressure_bar": 0.2}, faulty=[],
        outbox_depth=0.0, mqtt_connected=True, model_version="m-1",
    )


def _open(i: int) -> SeenEvent:
    data = {"kind": "anomaly", "state": "open", "episode": f"ep{i}", "id": f"id{i}",
            "start": "2023-11-14T22:14:00.000Z"}
    return SeenEvent("edge/m/events", T0 + i, data)


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    record, truth = tmp_path / "timeline.jsonl", tmp_path / "truth.jsonl"
    rec = Recorder(record)
    for i in range(SECONDS):
        inside = FAULT[0] + 3 <= i <= FAULT[1] + 5
        ratio = SPIKE_RATIO if i == 55 else (2.0 if inside else 0.3)
        events = [_open(i)] if i in (FAULT[0] + 6, 100) else []
        reading = None if i == 20 else _reading(i, ratio, inside)  # one scrape failed
        rec.write(record_line(T0 + i, reading, 1.0, events))
    rec.close()
    truth.write_text("".join(json.dumps(line) + "\n" for line in [
        {"kind": "level_shift", "channel": "oil_temp_c", "start": T0 + FAULT[0], "end": None},
        {"kind": "level_shift", "channel": "oil_temp_c", "start": T0 + FAULT[0],
         "end": T0 + FAULT[1]},
        {"kind": "spike", "channel": "pressure_bar", "start": T0 + 110, "end": None},
    ]))
    return record, truth


def test_demo_plot_writes_a_png(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    record, truth = inputs
    out = tmp_path / "plots" / "live.png"
    args = ["--record", str(record), "--truth", str(truth), "--out", str(out)]
    assert trainer_main(["demo-plot", *args]) == 0  # as `python -m trainer demo-plot`
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC)
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width > 1000
    assert height > 400


def test_the_figure_shows_score_threshold_faults_and_alerts(inputs: tuple[Path, Path]) -> None:
    record, truth = inputs
    fig = draw(read_record(record), read_truth(truth))
    ax, ax_alert = fig.axes[:2]
    score, threshold = ax.lines[0], ax.lines[1]
    assert len(score.get_xdata()) == SECONDS
    assert list(threshold.get_ydata()) == [1.0, 1.0]
    assert ax.get_ylim() == (0.0, RATIO_AXIS_MAX)
    assert "cut at 5" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.texts]
    assert labels == [" level_shift\n oil_temp_c", " spike\n pressure_bar"]
    spans = [p for p in ax.patches if p.get_alpha() is not None]
    assert len(spans) == 2  # the running spike is drawn up to the last line
    assert spans[0].get_x() == pytest.approx(FAULT[0] / 60)
    assert spans[0].get_width() == pytest.approx((FAULT[1] - FAULT[0]) / 60)
    markers = ax_alert.lines[0]
    assert list(markers.get_xdata()) == pytest.approx([(FAULT[0] + 6) / 60, 100 / 60])
    assert ax_alert.collections  # the alert shading


def test_an_empty_recording_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "timeline.jsonl"
    empty.write_text("")
    assert main(["--record", str(empty), "--out", str(tmp_path / "x.png")]) == 2
    assert "error: demo-plot: the recording has no lines to draw" in capsys.readouterr().err
    assert main(["--record", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()
