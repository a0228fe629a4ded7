"""``python -m edge_agent`` entry point."""

import sys

from edge_agent.cli import main

sys.exit(main())
