"""Child process of the last-will test: an uplink that runs until it is killed.

Prints ``connected`` once the uplink has its broker session, then idles; the parent
SIGKILLs it so that only the broker can announce it offline (the retained last will).
Usage: ``python child_uplink.py <port> <events.db>``.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deliver_support import MACHINE, mqtt_config, wait_until

from edge_agent.deliver.config import OutboxConfig
from edge_agent.deliver.mqtt import MqttUplink
from edge_agent.deliver.outbox import Outbox

CONNECT_WAIT_S = 10.0


def main() -> None:
    box = Outbox(Path(sys.argv[2]), OutboxConfig(), deliver=True)
    uplink = MqttUplink(mqtt_config(int(sys.argv[1])), MACHINE, box, dict)
    uplink.start()
    wait_until(lambda: uplink.connected, CONNECT_WAIT_S, "the broker")
    sys.stdout.write("connected\n")
    sys.stdout.flush()
    threading.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    main()
