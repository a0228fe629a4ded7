"""What the /metrics tests share: a full agent health snapshot for ``AgentMetrics`` to serve.

``edge_agent.metrics`` reads a typed ``edge_agent.health.AgentSnapshot`` at scrape time, key
by key, so a test's snapshot must have every key the agent fills in; one built here keeps the
tests in step with the type (mypy and a scrape both fail on a missing key). Imported as
``metrics_support`` (``tests/edge_agent`` is on sys.path while these tests run).
"""

from __future__ import annotations

from edge_agent.deliver.outbox import OutboxHealth
from edge_agent.health import AgentSnapshot, new_counts
from edge_agent.service.supervisor import TaskStatus


def sample_snapshot() -> AgentSnapshot:
    """A running agent's state: one source ("plc"), two channels with "oil_temp_c" faulty,
    model "m-1", three events queued, the uplink connected, one thread that has crashed
    twice and been restarted."""
    return AgentSnapshot(
        uptime_s=1.0, first_reading_s=0.5, model_version="m-1", counts=new_counts(),
        outbox_depth=3, outbox_dropped=0,
        outbox=OutboxHealth(degraded=False, held=0, store_errors=0, memory_dropped=0,
                            history_dropped=0, quarantined=0, last_error=None),
        faulty_channels=["oil_temp_c"],
        sources={"plc": {"samples": 40, "polls": 8, "poll_errors": 1}},
        threads={"source plc": TaskStatus(running=True, crashes=2, down_s=0.0,
                                          last_error="RuntimeError: x")},
        channels=["pressure_bar", "oil_temp_c"], mqtt_connected=True, mqtt=None,
    )
