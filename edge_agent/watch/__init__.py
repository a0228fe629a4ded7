"""``python -m edge_agent watch``: a live view of a running agent, for people at the gateway.

Reads what the agent already exposes (``/metrics``, and its events and retained status over
MQTT as an upstream consumer sees them, or its local event store without a broker), so it
needs nothing from the daemon and cannot disturb it. Modules: ``scrape`` (metrics), ``follow``
(events and status), ``truth`` (the simulator's injected faults), ``state`` and ``render``
(the screen or plain lines), ``record`` (the timeline for the plot), ``summary`` (injected
against detected) and ``run`` (the loop).
"""

from edge_agent.watch.run import run_watch

__all__ = ["run_watch"]
