"""Fleet learning at the desk (issue 11): ``python -m trainer federate``.

Verifies the gateways' signed model deltas (``collect``), clips them (``clip``), aggregates
them robustly (``aggregate`` streaming FedAvg, ``robust`` trimmed mean / median, picked by
``rules``), moves the global weights with a server optimizer (``server_opt``) and writes the
next run (``run_out``) that ``export bundle`` turns into the next int8 bundle. ``cli`` wires the
subcommand. Settings: ``settings``.
"""
