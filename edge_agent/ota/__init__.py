"""Over-the-air model updates: the gateway's side of ``export publish``.

``protocol`` is the wire contract shared with the desk; the rest runs on the gateway: a
deployment arrives on the downlink, its bundle is downloaded in chunks into a staging slot,
verified, canaried on the agent's recent live rows, switched in atomically (A/B slots) and
watched on probation, with an automatic rollback. See ``docs/ota.md``.
"""
