"""Tests for trainer.evaluate.report: the HTML page and the PNGs it references."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib import dates as mdates

from trainer.evaluate.metrics import point_metrics, summarize
from trainer.evaluate.report import (
    MAX_PLOT_POINTS,
    TIME_AXIS_LABEL,
    _bucket_starts,
    _reduce_max,
    _reduce_mean,
    heatmap_figure,
    timeline_figure,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _inputs(n: int) -> dict[str, object]:
    rng = np.random.default_rng(1)
    t = np.arange(n, dtype=np.float64) * 0.5
    y_true = np.zeros(n, dtype=bool)
    y_true[n // 3 : n // 3 + n // 10] = True
    score = rng.random(n) + 2.0 * y_true
    y_pred = score > 1.5
    y_pred[5:8] = True  # a false alarm so every outcome colour appears
    channels = ["temperature", "pressure", "vibration"]
    contributions = rng.random((n, 3))
    contributions[y_true, 2] += 3.0
    stage = np.where(score > 0.8, 2, 1)
    metrics = summarize(y_true, y_pred, score, t, 0.5, stage == 2)
    baselines = {"lof": point_metrics(y_true, score > 0.9)}
    return {
        "timestamps_s": t,
        "y_true": y_true,
        "score": score,
        "threshold": 1.5,
        "y_pred": y_pred,
        "channels": channels,
        "contributions": contributions,
        "metrics": metrics,
        "baselines": baselines,
        "stage": stage,
    }


def _referenced_images(html: str) -> list[str]:
    return re.findall(r"<img src='([^']+)'", html)


def test_report_references_existing_pngs(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "report"
    path = write_report(out, title="Pump 3 <test>", **_inputs(2_000))  # type: ignore[arg-type]
    assert path == out / "report.html"
    html = path.read_text(encoding="utf-8")
    assert "Pump 3 &lt;test&gt;" in html  # the title is escaped
    images = _referenced_images(html)
    assert set(images) == {"timeline.png", "curves.png", "attribution.png", "attribution_heat.png"}
    for name in images:
        assert not Path(name).is_absolute()
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    # Metric table with explanations and the comparison row for the baseline.
    assert "False alarm rate" in html
    assert "<td>lof</td>" in html
    assert "this model" in html
    # No temporary files are left behind.
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_report_without_contributions_or_stage(tmp_path: Path) -> None:
    inputs = _inputs(500)
    inputs["contributions"] = None
    inputs["stage"] = None
    path = write_report(tmp_path, title="minimal", **inputs)  # type: ignore[arg-type]
    images = _referenced_images(path.read_text(encoding="utf-8"))
    assert set(images) == {"timeline.png", "curves.png"}
    assert all((tmp_path / name).is_file() for name in images)


def test_report_handles_long_recordings(tmp_path: Path) -> None:
    # Above the plotting limit the timeline is drawn from bucket maxima instead of every point.
    write_report(tmp_path, title="long", **_inputs(3 * MAX_PLOT_POINTS))  # type: ignore[arg-type]
    assert (tmp_path / "timeline.png").read_bytes().startswith(PNG_MAGIC)


def test_downsampling_keeps_short_peaks() -> None:
    n = 5 * MAX_PLOT_POINTS
    values = np.zeros(n)
    values[12_345] = 7.0  # a one-sample spike must survive the reduction
    starts = _bucket_starts(n, MAX_PLOT_POINTS)
    assert len(starts) == MAX_PLOT_POINTS
    reduced = _reduce_max(values, starts)
    assert reduced.max() == 7.0
    assert np.count_nonzero(reduced) == 1
    means = _reduce_mean(np.ones((n, 2)), starts)
    np.testing.assert_allclose(means, 1.0)


def test_report_rejects_mismatched_contributions(tmp_path: Path) -> None:
    inputs = _inputs(100)
    inputs["contributions"] = np.zeros((100, 2))
    with pytest.raises(ValueError, match="contributions"):
        write_report(tmp_path, title="bad", **inputs)  # type: ignore[arg-type]


# 2026-01-05 12:00:00 UTC in Unix seconds: the timelines must read as this wall-clock time.
EPOCH_S = 1_767_614_400.0


@pytest.mark.parametrize("which", ["timeline", "heatmap"])
def test_time_axes_carry_wall_clock_dates(which: str) -> None:
    inputs = _inputs(3_600)
    t = EPOCH_S + np.asarray(inputs["timestamps_s"])  # 30 minutes at 0.5 s
    if which == "timeline":
        fig = timeline_figure(
            t=t,
            score=inputs["score"],  # type: ignore[arg-type]
            threshold=1.5,
            truth=inputs["y_true"],  # type: ignore[arg-type]
            pred=inputs["y_pred"],  # type: ignore[arg-type]
            stage=inputs["stage"],  # type: ignore[arg-type]
        )
        ax = fig.axes[-1]
    else:
        fig = heatmap_figure(t, inputs["contributions"], inputs["channels"])  # type: ignore[arg-type]
        ax = fig.axes[0]
    fig.canvas.draw()
    assert isinstance(ax.xaxis.get_major_formatter(), mdates.ConciseDateFormatter)
    assert ax.get_xlabel() == TIME_AXIS_LABEL
    # The limits are the recording's dates, not seconds: 12:00 to 12:30 on 2026-01-05
    # (with matplotlib's margins, 5 % of the span each side).
    lo, hi = (mdates.num2date(x).replace(tzinfo=None) for x in ax.get_xlim())
    assert abs((lo - dt.datetime(2026, 1, 5, 12, 0)).total_seconds()) <= 0.05 * 1800 + 1
    assert abs((hi - dt.datetime(2026, 1, 5, 12, 30)).total_seconds()) <= 0.05 * 1800 + 1
    labels = [label.get_text() for label in ax.get_xticklabels() if label.get_text()]
    assert any(re.fullmatch(r"12:\d\d", text) for text in labels), labels
    # The concise formatter puts the date once, in the offset, not "+1.7676e9".
    assert "2026-Jan-05" in ax.xaxis.get_major_formatter().get_offset()


def test_the_page_names_the_recording_period(tmp_path: Path) -> None:
    inputs = _inputs(200)
    inputs["timestamps_s"] = EPOCH_S + np.asarray(inputs["timestamps_s"])
    html = write_report(tmp_path, title="t", **inputs).read_text()  # type: ignore[arg-type]
    assert "2026-01-05 12:00:00 to 2026-01-05 12:01:39 UTC" in html
