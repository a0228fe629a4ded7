"""Which files hold the kernels, and the digest that names a compiled module after them.

The lowest layer of ``edge_agent.kernels``: the dispatcher (which backend runs the kernels),
the build (``numba.pycc``) and the desk's JIT cache stamp (``jitcache``) all key on the same
list and digest, so an edit to any kernel file is seen by all three.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # edge_agent/
# Every file holding a decorated kernel, relative to edge_agent/. A kernel in a file not
# listed here is refused at import (its edits would not change the digest).
KERNEL_SOURCES = (
    "data/grid.py",
    "detect/alerts.py",
    "detect/autoencoder.py",
    "detect/baseline.py",
    "detect/cascade.py",
    "detect/forest.py",
    "detect/projection.py",
    "detect/ring.py",
    "detect/threshold.py",
    "detect/windows.py",
    "pipeline.py",
)

# Build steps that change the compiled code without a kernel source changing: the
# module's name covers them too, so a gateway's install rebuilds when they change.
BUILD_INPUTS = ("kernels/boxing.py",)
DIGEST_FILES = KERNEL_SOURCES + BUILD_INPUTS


def sources_digest(root: Path = PACKAGE_DIR, files: tuple[str, ...] = DIGEST_FILES) -> str:
    """SHA-256 over every kernel source file and build input, names and contents, in a fixed
    order."""
    h = hashlib.sha256()
    for rel in files:
        h.update(rel.encode() + b"\0")
        h.update((root / rel).read_bytes())
        h.update(b"\0")
    return h.hexdigest()
