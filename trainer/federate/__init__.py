"""Fleet learning at the desk (issue 11): ``python -m trainer federate``.

Verifies the gateways' signed model deltas (``round``, with ``collect`` for the sources and
device keys, ``broker`` to announce the round and collect over MQTT), clips them (``clip``),
aggregates them (``aggregate`` streaming FedAvg, ``robust`` trimmed mean / median, picked by
``rules``; ``partial`` splits a round over several processes), moves the global weights with a
server optimizer (``server_opt``) and writes the next run (``run_out``, ``report`` for
federate.json) that ``export bundle`` turns into the next int8 bundle. ``cli`` holds the
options, ``command`` the flow, ``settings`` the round's settings. See
docs/fleet-learning.md, "Aggregation".
"""
