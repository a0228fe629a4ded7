"""The agent's health record: one typed snapshot for the status heartbeat and the metrics.

Built by the agent (``edge_agent.agent``) from its parts' own reports (outbox, uplink,
supervised threads, sources, data quality) and read by ``edge_agent.metrics`` at scrape time
and by the MQTT uplink for the retained heartbeat, so both always show the same numbers.
"""

from __future__ import annotations

from typing import NamedTuple, TypedDict

from edge_agent.deliver.outbox import OutboxHealth
from edge_agent.deliver.status import UplinkStats
from edge_agent.service.supervisor import TaskStatus


class LoopCounts(TypedDict):
    """What the main loop has done since start."""

    rows: int  # rows pushed into the pipeline
    windows: int  # windows screened
    stage2: int  # windows scored by the autoencoder
    events: int  # events emitted (committed to the outbox)
    windows_skipped: int  # windows not scorable (non-finite values), skipped
    loop_errors: int  # ticks whose scoring failed unexpectedly (rows skipped)
    clock_steps: int  # wall-clock steps detected


class AgentHealth(TypedDict):
    """The heartbeat's health block."""

    uptime_s: float
    first_reading_s: float | None
    model_version: str
    counts: LoopCounts
    outbox_depth: int
    outbox_dropped: int
    outbox: OutboxHealth
    faulty_channels: list[str]
    sources: dict[str, dict[str, int]]
    threads: dict[str, TaskStatus]


class AgentSnapshot(AgentHealth):
    """Health plus what only the metrics need."""

    channels: list[str]
    mqtt_connected: bool
    mqtt: UplinkStats | None


class LatestWindow(NamedTuple):
    """The newest scored window, for the live view's gauges (``edge_agent watch``).

    Replaced whole by the main loop on every push that completes a window, so a scrape in
    another thread reads one consistent record."""

    score_ratio: float  # stage-2 error / alert threshold; 0 when the screen passed the window
    alert: bool  # hysteresis state after it
    shares: tuple[float, ...]  # each channel's share of the latest stage-2 window's error


NO_WINDOW = LatestWindow(score_ratio=0.0, alert=False, shares=())


def new_counts() -> LoopCounts:
    return LoopCounts(
        rows=0, windows=0, stage2=0, events=0, windows_skipped=0, loop_errors=0, clock_steps=0
    )
