"""Child process of the outbox crash test: adds events until it is killed.

Prints each event's id on its own line only after ``Outbox.add`` has returned, so the parent
knows exactly which events the outbox promised to keep when it SIGKILLs this process.
Usage: ``python child_outbox.py <events.db> <max events>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deliver_support import make_event

from edge_agent.deliver.config import OutboxConfig
from edge_agent.deliver.outbox import Outbox
from edge_agent.events import SEVERITY_INFO

SEVERITY_LEVELS = 3


def main() -> None:
    box = Outbox(Path(sys.argv[1]), OutboxConfig(), deliver=True)
    for n in range(int(sys.argv[2])):
        event = make_event(n, severity=SEVERITY_INFO + n % SEVERITY_LEVELS)
        box.add(event)
        sys.stdout.write(event.id + "\n")
        sys.stdout.flush()
    box.close()


if __name__ == "__main__":
    main()
