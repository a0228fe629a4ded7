"""``edge_agent simulate``: Modbus and serial servers that play the plant for the agent."""

from edge_agent.simulate.run import run_simulate

__all__ = ["run_simulate"]
