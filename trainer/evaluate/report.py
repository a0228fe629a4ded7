"""HTML evaluation report: the human-readable end of the trainer pipeline.

After :func:`trainer.evaluate.metrics.summarize` has measured the trained detector on a labelled
test recording and :mod:`trainer.evaluate.baselines` has done the same for the classic
detectors, :func:`write_report` renders everything into ``report.html`` plus PNG plots in one
folder. The page references the plots by relative path, so the folder can be zipped, mailed or
opened straight from disk; nothing is fetched from the network.

Plots are drawn on :class:`matplotlib.figure.Figure` objects directly instead of through
``pyplot``: that always renders with the Agg raster backend, needs no display, and leaves the
process-wide pyplot backend alone. Every file is written to a temporary name in the same folder
and then moved into place, so a reader never sees a half-written report.
"""

from __future__ import annotations

import html
import io
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from sklearn.metrics import precision_recall_curve, roc_curve

from trainer.evaluate.kind_table import per_kind_section

#: Timelines longer than this are reduced before plotting; a PNG a few thousand pixels wide
#: cannot show more, and drawing millions of points is slow.
MAX_PLOT_POINTS = 20_000
#: Permissions of written files (mkstemp would leave them private to the owner).
REPORT_FILE_MODE = 0o644
#: Resolution of the saved figures.
FIGURE_DPI = 110
#: Figure sizes in inches (width, height).
TIMELINE_SIZE = (13.0, 5.5)
CURVES_SIZE = (11.0, 4.5)
ATTRIBUTION_SIZE = (8.0, 4.5)
HEATMAP_SIZE = (13.0, 3.5)
#: Colours of the outcome strip; chosen to stay distinguishable for red-green colour blindness
#: (blue / vermilion / orange / grey) rather than the usual green / red.
COLOR_TP = "#0072B2"
COLOR_FP = "#D55E00"
COLOR_FN = "#E69F00"
COLOR_TRUE_SPAN = "#999999"
COLOR_SCORE = "#222222"
COLOR_THRESHOLD = "#CC0000"
#: White-to-red colour map: zero contribution stays invisible, large ones stand out.
HEAT_CMAP = "Reds"
#: Opacity of the shaded true-anomaly spans behind the score line.
TRUE_SPAN_ALPHA = 0.25
#: Label of every time axis: timestamps are Unix epoch seconds, drawn as UTC date-times.
TIME_AXIS_LABEL = "time (UTC)"
MS_PER_S = 1000.0

#: Short explanations shown next to each metric in the report.
METRIC_HELP: dict[str, str] = {
    "tp": "True positives: anomalous samples that raised an alarm.",
    "fp": "False positives: normal samples that raised an alarm.",
    "tn": "True negatives: normal samples that stayed quiet.",
    "fn": "False negatives: anomalous samples that raised no alarm.",
    "precision": "Share of alarmed samples that were really anomalous, TP/(TP+FP).",
    "recall": "Share of anomalous samples that raised an alarm, TP/(TP+FN).",
    "f1": "Harmonic mean of precision and recall, TP/(TP+(FP+FN)/2).",
    "far": "False alarm rate: share of normal samples that raised an alarm, FP/(FP+TN).",
    "mar": "Missed alarm rate: share of anomalous samples without alarm, FN/(FN+TP).",
    "pa_precision": "Precision after point adjustment (a segment hit once counts as fully hit).",
    "pa_recall": "Recall after point adjustment: roughly the share of incidents caught at all.",
    "pa_f1": "F1 after point adjustment; generous, read it together with the plain F1.",
    "roc_auc": "Area under the ROC curve of the raw score, independent of the threshold "
    "(0.5 = random, 1 = perfect ranking).",
    "pr_auc": "Average precision of the raw score, independent of the threshold; more telling "
    "than ROC AUC when anomalies are rare.",
    "delay_mean_s": "Mean time from the start of a caught incident to its first alarm (s).",
    "delay_median_s": "Median detection delay over caught incidents (s).",
    "delay_p90_s": "90th percentile of the detection delay over caught incidents (s).",
    "delay_max_s": "Longest detection delay over caught incidents (s).",
    "delay_median_samples": "Median detection delay over caught incidents (samples).",
    "delay_p90_samples": "90th percentile of the detection delay (samples).",
    "delay_max_samples": "Longest detection delay over caught incidents (samples).",
    "n_segments": "Number of labelled anomaly segments (incidents).",
    "n_detected": "Incidents with at least one alarm inside them.",
    "nab_standard": "NAB score, SKAB change-point protocol, standard profile: 100 = every "
    "change point caught at once, 0 = no alarms, below 0 = worse than silence.",
    "nab_low_fp": "NAB score with false alarms weighted double.",
    "nab_low_fn": "NAB score with missed change points weighted double.",
    "stage2_fraction": "Share of samples the Isolation Forest screen passed to the autoencoder; "
    "drives the gateway's CPU load.",
}

#: Columns of the baseline comparison table, in display order (missing keys are skipped).
COMPARISON_KEYS = (
    "precision",
    "recall",
    "f1",
    "far",
    "mar",
    "pa_f1",
    "roc_auc",
    "pr_auc",
    "delay_mean_s",
    "nab_standard",
    "nab_low_fp",
    "nab_low_fn",
)

_COUNT_KEYS = {"tp", "fp", "tn", "fn", "n_segments", "n_detected"}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ours { font-weight: bold; background: #f3f7fb; }
img { max-width: 100%; border: 1px solid #eee; }
p.note { color: #555; font-size: 0.9em; }
"""


# --------------------------------------------------------------------------------------------
# File helpers
# --------------------------------------------------------------------------------------------


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        # mkstemp creates owner-only files; a report is meant to be read by others.
        os.chmod(tmp_name, REPORT_FILE_MODE)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _save_figure(fig: Figure, path: Path) -> str:
    """Render ``fig`` to PNG, write it atomically and return its file name for the HTML."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    _atomic_write_bytes(path, buf.getvalue())
    return path.name


# --------------------------------------------------------------------------------------------
# Downsampling
# --------------------------------------------------------------------------------------------


def _bucket_starts(n: int, max_points: int) -> np.ndarray:
    """Start indices of at most ``max_points`` contiguous, nearly equal buckets over ``n``."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n, max_points, endpoint=False).astype(np.int64))


def _reduce_max(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per-bucket maximum along axis 0: keeps short score peaks and short spans visible."""
    if len(starts) == len(values):
        return values
    return np.maximum.reduceat(values, starts, axis=0)


def _reduce_mean(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per-bucket mean along axis 0 (for the attribution heat strip, where peaks would mislead)."""
    if len(starts) == len(values):
        return values
    sums = np.add.reduceat(values, starts, axis=0)
    counts = np.diff(np.append(starts, len(values))).astype(np.float64)
    return sums / counts.reshape((-1,) + (1,) * (values.ndim - 1))


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _shade(ax: Axes, t: np.ndarray, mask: np.ndarray, color: str, alpha: float) -> None:
    """Shade the x ranges where ``mask`` holds, over the full height of ``ax``."""
    if not mask.any():
        return
    ax.fill_between(
        t,
        0.0,
        1.0,
        where=mask,
        step="post",
        color=color,
        alpha=alpha,
        linewidth=0.0,
        transform=ax.get_xaxis_transform(),
    )


def as_datetimes(t_s: np.ndarray) -> np.ndarray:
    """Unix epoch seconds as UTC ``datetime64[ms]``, which matplotlib draws as dates."""
    return np.round(np.asarray(t_s, dtype=np.float64) * MS_PER_S).astype("datetime64[ms]")


def _date_axis(ax: Axes) -> None:
    """Wall-clock ticks on ``ax``'s x axis: concise labels (the date once, then the times)."""
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel(TIME_AXIS_LABEL)


def timeline_figure(
    *,
    t: np.ndarray,
    score: np.ndarray,
    threshold: float,
    truth: np.ndarray,
    pred: np.ndarray,
    stage: np.ndarray | None,
) -> Figure:
    """The score, outcome and (optional) stage strips over wall-clock time."""
    starts = _bucket_starts(len(t), MAX_PLOT_POINTS)
    t_s = as_datetimes(t[starts])
    score_s = _reduce_max(score, starts)
    truth_s = _reduce_max(truth, starts)
    tp_s = _reduce_max(truth & pred, starts)
    fp_s = _reduce_max(~truth & pred, starts)
    fn_s = _reduce_max(truth & ~pred, starts)

    n_rows = 3 if stage is not None else 2
    ratios = [6, 1, 1][:n_rows]
    fig = Figure(figsize=TIMELINE_SIZE)
    axes = fig.subplots(n_rows, 1, sharex=True, gridspec_kw={"height_ratios": ratios})
    ax_score, ax_outcome = axes[0], axes[1]

    _shade(ax_score, t_s, truth_s, COLOR_TRUE_SPAN, TRUE_SPAN_ALPHA)
    ax_score.plot(t_s, score_s, color=COLOR_SCORE, linewidth=0.7, label="anomaly score")
    ax_score.axhline(threshold, color=COLOR_THRESHOLD, linestyle="--", linewidth=1.0)
    ax_score.set_ylabel("score")
    title = "Anomaly score over time"
    if len(starts) < len(t):
        title += f" (bucket maxima, {len(t)} samples in {len(starts)} buckets)"
    ax_score.set_title(title)
    ax_score.legend(
        handles=[
            ax_score.lines[0],
            ax_score.lines[1],
            Patch(color=COLOR_TRUE_SPAN, alpha=TRUE_SPAN_ALPHA, label="labelled anomaly"),
        ],
        labels=["anomaly score", f"threshold {threshold:.4g}", "labelled anomaly"],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
    )

    _shade(ax_outcome, t_s, tp_s, COLOR_TP, 1.0)
    _shade(ax_outcome, t_s, fp_s, COLOR_FP, 1.0)
    _shade(ax_outcome, t_s, fn_s, COLOR_FN, 1.0)
    ax_outcome.set_yticks([])
    ax_outcome.set_ylabel("outcome", rotation=0, ha="right", va="center")
    ax_outcome.legend(
        handles=[
            Patch(color=COLOR_TP, label="detected (TP)"),
            Patch(color=COLOR_FP, label="false alarm (FP)"),
            Patch(color=COLOR_FN, label="missed (FN)"),
        ],
        # Outside the strip, to its right, so the legend never hides an outcome span.
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize="small",
    )

    if stage is not None:
        ax_stage = axes[2]
        stage_s = _reduce_max(stage.astype(np.float64), starts)
        # Filled rather than a line: a flickering stage would otherwise render as a black block.
        ax_stage.fill_between(
            t_s, float(stage_s.min()), stage_s, step="post", color=COLOR_TRUE_SPAN, linewidth=0.0
        )
        ax_stage.set_ylabel("stage", rotation=0, ha="right", va="center")
    _date_axis(axes[-1])
    return fig


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most MAX_PLOT_POINTS points of a curve (always keeping both ends)."""
    if len(x) <= MAX_PLOT_POINTS:
        return x, y
    idx = np.unique(np.linspace(0, len(x) - 1, MAX_PLOT_POINTS).round().astype(np.int64))
    return x[idx], y[idx]


def _plot_curves(
    path: Path, truth: np.ndarray, score: np.ndarray, metrics: Mapping[str, Any]
) -> str:
    fig = Figure(figsize=CURVES_SIZE)
    ax_pr, ax_roc = fig.subplots(1, 2)
    if truth.any() and not truth.all():
        precision, recall, _ = precision_recall_curve(truth, score)
        r, p = _thin(recall, precision)
        ax_pr.step(r, p, where="post", color=COLOR_TP)
        ax_pr.axhline(truth.mean(), color=COLOR_TRUE_SPAN, linestyle=":", label="random")
        fpr, tpr, _ = roc_curve(truth, score)
        f, tr = _thin(fpr, tpr)
        ax_roc.plot(f, tr, color=COLOR_TP)
        ax_roc.plot([0, 1], [0, 1], color=COLOR_TRUE_SPAN, linestyle=":", label="random")
        ax_pr.legend(loc="lower left")
        ax_roc.legend(loc="lower right")
    else:
        for ax in (ax_pr, ax_roc):
            ax.text(0.5, 0.5, "undefined: only one class in the labels", ha="center")
    ax_pr.set_title(f"Precision-recall (AP = {_fmt(metrics.get('pr_auc', math.nan))})")
    ax_pr.set_xlabel("recall")
    ax_pr.set_ylabel("precision")
    ax_roc.set_title(f"ROC (AUC = {_fmt(metrics.get('roc_auc', math.nan))})")
    ax_roc.set_xlabel("false positive rate")
    ax_roc.set_ylabel("true positive rate")
    for ax in (ax_pr, ax_roc):
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
    return _save_figure(fig, path)


def _plot_attribution(
    path: Path, contributions: np.ndarray, pred: np.ndarray, channels: list[str]
) -> tuple[str, str]:
    """Bar chart of mean per-channel contribution during alarms; returns (file, caption)."""
    if pred.any():
        mean = contributions[pred].mean(axis=0)
        caption = f"mean over the {int(pred.sum())} alarmed samples"
    else:
        mean = contributions.mean(axis=0)
        caption = "no alarms were raised, so this is the mean over all samples"
    order = np.argsort(mean)[::-1]
    fig = Figure(figsize=ATTRIBUTION_SIZE)
    ax = fig.subplots()
    ax.barh([channels[i] for i in order][::-1], mean[order][::-1], color=COLOR_TP)
    ax.set_xlabel("mean reconstruction-error contribution")
    ax.set_title(f"Per-channel attribution ({caption})")
    return _save_figure(fig, path), caption


def heatmap_figure(t: np.ndarray, contributions: np.ndarray, channels: list[str]) -> Figure:
    """Each channel's share of the error over wall-clock time, as a heat strip."""
    starts = _bucket_starts(len(t), MAX_PLOT_POINTS)
    strip = _reduce_mean(contributions.astype(np.float64), starts)
    fig = Figure(figsize=HEATMAP_SIZE)
    ax = fig.subplots()
    # imshow takes a numeric extent: matplotlib's date numbers, then a date axis over them.
    lo, hi = mdates.date2num(as_datetimes(np.array([t[0], t[-1]])))
    image = ax.imshow(
        strip.T,
        aspect="auto",
        interpolation="nearest",
        extent=(lo, hi if hi > lo else lo + 1.0 / mdates.SEC_PER_DAY, len(channels) - 0.5, -0.5),
        cmap=HEAT_CMAP,
    )
    ax.xaxis_date()
    ax.set_yticks(range(len(channels)), channels)
    _date_axis(ax)
    ax.set_title("Per-channel error contribution over time")
    fig.colorbar(image, ax=ax, pad=0.01)
    return fig


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------


def _fmt(value: Any, key: str = "") -> str:
    """Human formatting of one metric value; NaN becomes 'n/a'."""
    if isinstance(value, bool | str) or value is None:
        return html.escape(str(value))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    if math.isnan(number):
        return "n/a"
    if key in _COUNT_KEYS and number.is_integer():
        return f"{int(number):d}"
    return f"{number:.4g}"


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    rows = [
        f"<tr><td>{html.escape(key)}</td><td class='num'>{_fmt(value, key)}</td>"
        f"<td>{html.escape(METRIC_HELP.get(key, ''))}</td></tr>"
        for key, value in metrics.items()
    ]
    return (
        "<table><tr><th>metric</th><th>value</th><th>meaning</th></tr>" + "".join(rows) + "</table>"
    )


def _comparison_table(
    metrics: Mapping[str, Any], baselines: Mapping[str, Mapping[str, Any]]
) -> str:
    all_rows: list[tuple[str, Mapping[str, Any], bool]] = [("this model", metrics, True)]
    all_rows += [(name, values, False) for name, values in baselines.items()]
    keys = [k for k in COMPARISON_KEYS if any(k in row for _, row, _ in all_rows)]
    header = "".join(
        f"<th title='{html.escape(METRIC_HELP.get(k, ''), quote=True)}'>{html.escape(k)}</th>"
        for k in keys
    )
    body = []
    for name, values, ours in all_rows:
        cells = "".join(f"<td class='num'>{_fmt(values.get(k, math.nan), k)}</td>" for k in keys)
        cls = " class='ours'" if ours else ""
        body.append(f"<tr{cls}><td>{html.escape(name)}</td>{cells}</tr>")
    return f"<table><tr><th>method</th>{header}</tr>{''.join(body)}</table>"


def _img(src: str, alt: str) -> str:
    return f"<p><img src='{html.escape(src, quote=True)}' alt='{html.escape(alt, quote=True)}'></p>"


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _check_1d(name: str, values: np.ndarray, n: int) -> None:
    if values.ndim != 1 or len(values) != n:
        raise ValueError(f"{name} must be 1-D with {n} entries, got shape {values.shape}")


def write_report(
    out_dir: Path,
    *,
    title: str,
    timestamps_s: np.ndarray,
    y_true: np.ndarray,
    score: np.ndarray,
    threshold: float,
    y_pred: np.ndarray,
    channels: list[str],
    contributions: np.ndarray | None,
    metrics: Mapping[str, Any],
    baselines: Mapping[str, Mapping[str, Any]],
    stage: np.ndarray | None,
    per_kind: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``report.html`` and its PNG plots into ``out_dir``; return the HTML path.

    ``contributions`` is an ``(n, C)`` array of per-channel reconstruction-error contributions
    (columns named by ``channels``); when given, an attribution bar chart and a heat strip are
    added. ``metrics`` is the model's flat metric dictionary (see
    :func:`trainer.evaluate.metrics.summarize`), ``baselines`` maps a method name to the same
    kind of dictionary for that method, and ``stage`` is an optional per-sample pipeline stage
    drawn under the timeline; ``per_kind`` (``metrics.json``'s ``per_kind``) adds a table of
    episodes caught and delays per fault kind. Existing files of the same names are replaced.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = np.asarray(timestamps_s, dtype=np.float64)
    n = len(t)
    if n == 0:
        raise ValueError("cannot report on an empty recording")
    truth = np.asarray(y_true) != 0
    pred = np.asarray(y_pred) != 0
    values = np.asarray(score, dtype=np.float64)
    for name, arr in (("y_true", truth), ("y_pred", pred), ("score", values), ("timestamps_s", t)):
        _check_1d(name, arr, n)
    stage_arr = None if stage is None else np.asarray(stage)
    if stage_arr is not None:
        _check_1d("stage", stage_arr, n)
    contrib = None if contributions is None else np.asarray(contributions, dtype=np.float64)
    if contrib is not None and contrib.shape != (n, len(channels)):
        raise ValueError(
            f"contributions must have shape ({n}, {len(channels)}), got {contrib.shape}"
        )

    sections: list[str] = []
    timeline = _save_figure(
        timeline_figure(
            t=t, score=values, threshold=threshold, truth=truth, pred=pred, stage=stage_arr
        ),
        out_dir / "timeline.png",
    )
    sections.append(
        "<h2>Score timeline</h2>"
        "<p>The anomaly score (black) against the alarm threshold (dashed red); labelled "
        "anomalies are shaded grey. The strip below shows the outcome: blue where an anomaly "
        "was alarmed, vermilion for false alarms, orange for missed anomalous samples (alarmed: "
        "in alert, or with a sensor fault by the model's learned stuck, noise, jump or spike "
        "limits, as the gateway reports them)."
        + (
            " The bottom strip is the pipeline stage reached by each sample."
            if stage_arr is not None
            else ""
        )
        + "</p>"
        + _img(timeline, "score timeline")
    )

    curves = _plot_curves(out_dir / "curves.png", truth, values, metrics)
    sections.append(
        "<h2>Precision-recall and ROC curves</h2>"
        "<p>How the score ranks anomalous above normal samples at every possible threshold; "
        "the chosen threshold is one point on each curve.</p>" + _img(curves, "PR and ROC curves")
    )

    if contrib is not None:
        bars, caption = _plot_attribution(out_dir / "attribution.png", contrib, pred, channels)
        heat = _save_figure(heatmap_figure(t, contrib, channels), out_dir / "attribution_heat.png")
        sections.append(
            "<h2>Per-channel attribution</h2>"
            f"<p>Which sensor channels the reconstruction error came from ({html.escape(caption)})."
            " The heat strip shows the same contributions over time.</p>"
            + _img(bars, "per-channel attribution")
            + _img(heat, "attribution over time")
        )

    sections.append("<h2>Metrics</h2>" + _metrics_table(metrics))
    if per_kind:
        sections.append(per_kind_section(per_kind))
    sections.append(
        "<h2>Comparison with baselines</h2>"
        "<p>Classic detectors fitted on the same training data, each thresholded at a high "
        "quantile of its own training scores: isolation forest, LOF and one-class SVM on the "
        "window features; pca_t2_spe, the process-monitoring PCA with Hotelling's T² and SPE "
        "(Q), on each window's newest sample. Hover a column header for its meaning.</p>"
        + _comparison_table(metrics, baselines)
    )

    duration = float(t[-1] - t[0]) if n else 0.0
    first, last = (str(d).replace("T", " ") for d in as_datetimes(t[[0, -1]]).astype("M8[s]"))
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p class='note'>{n} samples over {duration:.1f} s, {first} to {last} UTC; "
        f"{int(truth.sum())} labelled "
        f"anomalous, {int(pred.sum())} alarmed at threshold {threshold:.4g}.</p>"
        + "".join(sections)
        + "</body></html>\n"
    )
    report_path = out_dir / "report.html"
    _atomic_write_bytes(report_path, page.encode("utf-8"))
    return report_path
