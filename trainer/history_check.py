"""Is this history enough for what ``trainer fit`` will do with it? Findings in plain words.

Runs in ``trainer fit`` (:mod:`trainer.cli`) on the table as read, before training: a history
that is too short, a channel that drifts through it, a channel stuck at one value or seen over
a sliver of its physical range all train a model that raises alarms later, on normal data,
while nothing is said at fit time. The rules are in :mod:`trainer.history_findings`; each
finding names its rule, the measured value, the limit and what to do. The CLI prints them,
records them in the run directory (``history_check.json``) and, with ``--strict-history``,
refuses the fit. numpy only; rows labelled anomalous are left out, as fit leaves them out.

What it cannot know: which operating modes a machine has. A history of one load level looks
as healthy as one of all of them; the ranges seen against the configured physical ranges
(``[channels.X] min/max`` of the gateway config) and the per-channel summary in the JSON are
what a user can judge that by.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.config.strict import StrictModel
from edge_agent.data.table import SensorTable
from edge_agent.fsutil import atomic_write
from trainer.config import TrainConfig
from trainer.history_findings import ChannelSummary, Finding, channel_findings, short_findings
from trainer.history_trend import robust_trend

CHECK_FILE = "history_check.json"
# Percentiles taken as the range a channel was seen over: the odd spike does not widen it.
LOW_PERCENTILE = 1.0
HIGH_PERCENTILE = 99.0


class HistoryCheck(StrictModel):
    """The whole check: what was looked at and what was found."""

    source: str
    rows: int
    normal_rows: int  # rows not labelled anomalous: what fit trains and calibrates on
    covered_s: float  # from the first sample to one sample period past the last
    findings: tuple[Finding, ...]
    channels: tuple[ChannelSummary, ...]

    def warning_lines(self) -> list[str]:
        return [f"warning: {f.message}" for f in self.findings]

    def write(self, run_dir: Path) -> Path:
        """Record the check as ``history_check.json`` in ``run_dir``; returns its path."""
        path = run_dir / CHECK_FILE
        atomic_write(path, self.model_dump_json(indent=2).encode(), durable=False)
        return path


def configured_ranges(agent_config: Path) -> dict[str, tuple[float, float]]:
    """``[channels.X] min/max`` of a gateway config, for the channels that set both."""
    from edge_agent.config.load import load_config

    cfg = load_config(agent_config)
    return {
        name: (q.min, q.max)
        for name, q in cfg.channels.items()
        if q.min is not None and q.max is not None
    }


def check_history(
    table: SensorTable,
    cfg: TrainConfig,
    ranges: Mapping[str, tuple[float, float]] | None = None,
) -> HistoryCheck:
    """Every finding about ``table`` as the history of a fit with ``cfg``.

    ``ranges`` maps channel names to their configured physical ``(min, max)``.
    """
    for name, (lo, hi) in (ranges or {}).items():
        if not lo < hi:
            raise ValueError(
                f"configured range of channel {name!r}: min {lo} is not below max {hi}"
            )
    normal = table.normal_rows()
    times = table.timestamps[normal]
    covered = _covered_s(times)
    summaries = []
    per_channel: list[Finding] = []
    for j, name in enumerate(table.channels):
        s = _summary(name, times, table.values[normal, j], (ranges or {}).get(name))
        if s is not None:
            summaries.append(s)
            per_channel += channel_findings(s, covered, cfg)
    # Trends first, strongest first: the channel most likely to raise alarms leads.
    per_channel.sort(key=lambda f: (f.kind != "trend", -f.value if f.kind == "trend" else 0.0))
    findings = short_findings(int(normal.sum()), covered, len(table.channels), cfg)
    return HistoryCheck(
        source=table.path,
        rows=table.rows,
        normal_rows=int(normal.sum()),
        covered_s=covered,
        findings=(*findings, *per_channel),
        channels=tuple(summaries),
    )


def _summary(
    name: str,
    times: npt.NDArray[np.float64],
    col: npt.NDArray[np.float64],
    configured: tuple[float, float] | None,
) -> ChannelSummary | None:
    seen = col[np.isfinite(col)]
    if seen.size < 2:
        return None  # fit itself refuses such a channel, naming it
    values, counts = np.unique(seen, return_counts=True)
    top = int(np.argmax(counts))
    low, high = (float(v) for v in np.percentile(seen, [LOW_PERCENTILE, HIGH_PERCENTILE]))
    return ChannelSummary(
        name=name,
        samples=int(seen.size),
        low=low,
        high=high,
        levels=int(values.size),
        top_share=float(counts[top] / seen.size),
        top_value=float(values[top]),
        trend=robust_trend(times, col),
        configured_range=configured,
        range_coverage=None
        if configured is None
        else (high - low) / (configured[1] - configured[0]),
    )


def _covered_s(times: npt.NDArray[np.float64]) -> float:
    if times.size < 2:
        return 0.0
    steps = np.diff(np.sort(times))
    steps = steps[steps > 0]
    period = float(np.median(steps)) if steps.size else 0.0
    return float(times.max() - times.min()) + period
