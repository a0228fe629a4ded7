"""How the agent talks to its service manager (systemd) while it runs as a daemon.

``edge_agent.service.notify`` speaks systemd's notify protocol: the daemon's main loop says when
start-up is finished, when a SIGHUP reload begins and ends, when the SIGTERM drain starts, and
pings the watchdog. Outside systemd every call is a cheap no-op. The functions are deliberately
not re-exported here, so that ``edge_agent.service.notify`` always names the module.
"""
