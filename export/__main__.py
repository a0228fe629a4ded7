"""``python -m export`` entry point."""

import sys

from export.cli import main

sys.exit(main())
