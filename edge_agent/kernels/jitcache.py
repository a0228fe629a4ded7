"""The desk's JIT cache keyed on every kernel source at once, not on each kernel's own file.

Used by ``edge_agent.kernels.dispatch`` when Numba's JIT runs the kernels. Numba stamps a
cached kernel with a hash of the file that defines it, so a fused kernel
(``pipeline._front`` inlines the grid, window and ring kernels of three other files) kept
running its old machine code after one of those files changed. Here every kernel of
:data:`~edge_agent.kernels.sources.KERNEL_SOURCES` is stamped with the hash of all of them:
any edit invalidates every cached kernel, which recompiles on its next call.

This hooks Numba's cache locators (``numba.core.caching.CacheImpl._locator_classes``, named
``_CacheImpl`` in older Numba; not a public API). Where that attribute is missing, the kernels
are compiled without a disk cache instead: slower starts, never stale code. The device runs
the compiled module and has no JIT cache at all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_installed: dict[str, str] = {}


def _kernel_files() -> set[str]:
    from edge_agent.kernels.sources import KERNEL_SOURCES, PACKAGE_DIR

    return {str((PACKAGE_DIR / rel).resolve()) for rel in KERNEL_SOURCES}


def _locator(base: type, stamp: str, files: set[str]) -> type:
    """A subclass of one of Numba's locators that only takes kernel files, stamped ``stamp``."""

    def from_function(cls: type, py_func: Any, py_file: str) -> Any:
        if str(Path(py_file).resolve()) not in files:
            return None
        return base.from_function.__func__(cls, py_func, py_file)  # type: ignore[attr-defined]

    def get_source_stamp(self: Any) -> str:
        return stamp

    return type(
        f"EdgeKernels{base.__name__}",
        (base,),
        {"from_function": classmethod(from_function), "get_source_stamp": get_source_stamp},
    )


def install(digest: str) -> bool:
    """Stamp cached kernels with ``digest``; False (and no disk cache) if Numba changed."""
    if _installed.get("digest") == digest:
        return True
    from numba.core import caching

    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    bases = getattr(impl, "_locator_classes", None)
    if impl is None or not isinstance(bases, list):
        log.warning("this numba has no cache locators to hook; kernels compile on every start")
        _installed["digest"] = digest
        return False
    files = _kernel_files()
    plain = [b for b in bases if not getattr(b, "_edge_kernels", False)]
    ours = [_locator(b, f"edge-kernels-{digest}", files) for b in plain]
    for cls in ours:
        cls._edge_kernels = True  # type: ignore[attr-defined]
    impl._locator_classes = ours + plain
    _installed["digest"] = digest
    return True
