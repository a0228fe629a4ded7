"""``python -m trainer`` entry point."""

import sys

from trainer.cli import main

sys.exit(main())
