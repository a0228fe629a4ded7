"""``python -m edge_agent.kernels``: which backend runs the kernels here, and why."""

import sys

from edge_agent.kernels.dispatch import INSTALL_HINT, backend, module_filename

b = backend()
print(f"kernels: {b.kind} ({b.detail})")
print(f"compiled module for these sources: {module_filename(b.digest)}")
if b.kind == "none":
    print(INSTALL_HINT)
sys.exit(0 if b.kind != "none" else 1)
