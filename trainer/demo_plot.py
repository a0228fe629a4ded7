"""The demo's picture: a live run's score against the alert threshold, with what was injected.

At the desk end of the live demo: ``python -m edge_agent watch --record R --truth T`` writes
the agent's per-second timeline (``edge_agent.watch.record``) while the simulator writes what
it injected (``edge_agent.watch.truth``); ``python -m trainer demo-plot --record R --truth T
--out PNG`` (or ``python -m trainer.demo_plot``) draws them on one time axis:

* the latest window's stage-2 error / alert threshold (0 while the forest screen passes the
  windows), with the threshold at 1;
* each injected fault as a shaded span labelled with its kind and channel;
* below, the agent's alert state (hysteresis) and a marker per ``open`` event as it arrived.

Drawn on a :class:`matplotlib.figure.Figure` (Agg, no display), saved as the evaluation
report saves its plots (``trainer.evaluate.report``).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.errors import EXIT_INPUT_ERROR
from edge_agent.watch.record import RecordLine, read_record
from edge_agent.watch.truth import Injected, read_truth

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

log = logging.getLogger("trainer.demo_plot")

FIGURE_SIZE = (13.0, 5.0)  # inches
RATIO_AXIS_MAX = 5.0  # the score axis stops at 5 x threshold: big faults would flatten the rest
SPAN_ALPHA = 0.18
ALERT_ALPHA = 0.6
KIND_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#999999")
S_PER_MIN = 60.0


def _minutes(t: float, t0: float) -> float:
    return (t - t0) / S_PER_MIN


def _spans(ax: Axes, truth: Sequence[Injected], t0: float, t_end: float) -> list[Patch]:
    """Shade each injected episode, label it, and return one legend patch per kind."""
    from matplotlib.patches import Patch

    kinds = sorted({i.kind for i in truth})
    color = {k: KIND_COLORS[n % len(KIND_COLORS)] for n, k in enumerate(kinds)}
    for i in truth:
        a, b = _minutes(i.start, t0), _minutes(i.end if i.end is not None else t_end, t0)
        ax.axvspan(a, max(b, a + 1 / S_PER_MIN), color=color[i.kind], alpha=SPAN_ALPHA,
                   linewidth=0)
        ax.text(a, 0.98, f" {i.kind}\n {i.channel}", transform=ax.get_xaxis_transform(),
                va="top", ha="left", fontsize="x-small", color=color[i.kind])
    return [Patch(color=color[k], alpha=SPAN_ALPHA, label=f"injected {k}") for k in kinds]


def draw(record: Sequence[RecordLine], truth: Sequence[Injected]) -> Figure:
    """The figure for a recording (at least one line) and its truth episodes."""
    # Drawing imports stay here: `python -m trainer` builds its parser from this module.
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from trainer.evaluate.report import COLOR_FP, COLOR_SCORE, COLOR_THRESHOLD, COLOR_TP, _shade

    if not record:
        raise ValueError("the recording has no lines to draw")
    t0, t_end = record[0]["time"], record[-1]["time"]
    t = np.array([_minutes(r["time"], t0) for r in record])
    ratio = np.array([math.nan if r["score_ratio"] is None else r["score_ratio"] for r in record])
    alert = np.array([bool(r["alert"]) for r in record])
    opens = [_minutes(e["received"], t0) for r in record for e in r["events"]
             if e["kind"] == "anomaly" and e["state"] == "open"]

    fig = Figure(figsize=FIGURE_SIZE)
    ax, ax_alert = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [5, 1]})
    seen = [i for i in truth if i.start <= t_end and (i.end is None or i.end >= t0)]
    patches = _spans(ax, seen, t0, t_end)
    ax.plot(t, ratio, color=COLOR_SCORE, linewidth=0.9, label="score / threshold")
    ax.axhline(1.0, color=COLOR_THRESHOLD, linestyle="--", linewidth=1.0, label="alert threshold")
    top = float(np.nanmax(ratio)) if np.isfinite(ratio).any() else 1.0
    clipped = top > RATIO_AXIS_MAX
    ax.set_ylim(0.0, min(max(top * 1.05, 1.5), RATIO_AXIS_MAX))
    ax.set_ylabel("score / threshold" + (f" (cut at {RATIO_AXIS_MAX:g})" if clipped else ""))
    ax.set_title("Live demo: latest window's stage-2 error against the alert threshold")
    ax.legend(handles=[*ax.lines[:2], *patches], loc="upper left", bbox_to_anchor=(1.0, 1.0),
              fontsize="small")

    _shade(ax_alert, t, alert, COLOR_FP, ALERT_ALPHA)
    if opens:
        ax_alert.plot(opens, [0.5] * len(opens), linestyle="none", marker="v", color=COLOR_TP,
                      label="open event received")
    ax_alert.set_ylim(0.0, 1.0)
    ax_alert.set_yticks([])
    ax_alert.set_ylabel("alert", rotation=0, ha="right", va="center")
    ax_alert.legend(
        handles=[Patch(color=COLOR_FP, alpha=ALERT_ALPHA, label="agent in alert"),
                 *ax_alert.lines],
        loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small",
    )
    ax_alert.set_xlabel("minutes since the recording started")
    return fig


def write_plot(record: Path, truth: Path | None, out: Path) -> Path:
    """Read the recording (and truth file), draw, write the PNG; returns ``out``. Raises
    OSError for a file that cannot be read or written, ValueError for an empty recording."""
    from trainer.evaluate.report import _save_figure

    fig = draw(read_record(record), [] if truth is None else read_truth(truth))
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_figure(fig, out)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--record", type=Path, required=True, help="timeline of `watch --record`")
    p.add_argument("--truth", type=Path, help="truth file of `simulate --truth`")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")


def run(args: argparse.Namespace) -> int:
    """Draw from parsed arguments; a missing or empty input is a clean error (exit 2)."""
    try:
        out = write_plot(args.record, args.truth, args.out)
    except (OSError, ValueError) as err:
        print(f"error: demo-plot: {err}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="trainer.demo_plot", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
