"""The report's per-fault-kind table: episodes caught and detection delay for each kind.

Rendered by :func:`trainer.evaluate.report.write_report` from ``metrics["per_kind"]`` (the
``as_dict`` records of :func:`trainer.evaluate.per_kind.per_kind_detection`, one list for the
cascade and one for stage 2 alone), so the page shows the same figures ``metrics.json`` holds.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

#: Columns in display order: (record key, header, tooltip).
KIND_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("episodes", "episodes", "Labelled episodes of this kind."),
    ("caught", "caught", "Episodes with at least one alarm inside them."),
    ("episode_recall", "recall (episodes)", "Share of episodes caught."),
    ("median_samples", "delay median (samples)", "Samples from episode start to first alarm."),
    ("p90_samples", "delay p90 (samples)", "90th percentile of the delay over caught episodes."),
    ("median_s", "delay median (s)", "Median delay in seconds."),
    ("p90_s", "delay p90 (s)", "90th percentile of the delay in seconds."),
)
_INTEGER_KEYS = {"episodes", "caught"}


def _cell(value: Any, key: str) -> str:
    number = float(value)
    if math.isnan(number):
        return "n/a"
    if key in _INTEGER_KEYS:
        return f"{int(number):d}"
    if key == "episode_recall":
        return f"{number:.0%}"
    return f"{number:.4g}"


def per_kind_section(per_kind: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """An ``<h2>`` section with one table row per (pipeline, fault kind)."""
    header = "".join(
        f"<th title='{html.escape(tip, quote=True)}'>{html.escape(name)}</th>"
        for _, name, tip in KIND_COLUMNS
    )
    body = []
    for pipeline, records in per_kind.items():
        for rec in records:
            cells = "".join(
                f"<td class='num'>{_cell(rec[key], key)}</td>" for key, _, _ in KIND_COLUMNS
            )
            cls = " class='ours'" if pipeline == "cascade" else ""
            body.append(
                f"<tr{cls}><td>{html.escape(pipeline)}</td>"
                f"<td>{html.escape(str(rec['kind']))}</td>{cells}</tr>"
            )
    return (
        "<h2>Detection per fault kind</h2>"
        "<p>An episode is a run of labelled rows of one fault kind; it is caught when an alarm "
        "is raised inside it, and its delay counts from its first row (alarms before it are "
        "false alarms). Delays are over caught episodes only.</p>"
        f"<table><tr><th>pipeline</th><th>kind</th>{header}</tr>{''.join(body)}</table>"
    )
