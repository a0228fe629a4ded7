"""Load a script of ``bench/`` as a module, as the smoke tests of this folder run them.

The scripts are not a package: they import their ``common`` helper from ``bench/`` itself, and
their dataclasses look their module up by name in ``sys.modules``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
SKAB = ROOT.parent / "shared" / "datasets" / "skab" / "data"


def load_bench(name: str) -> ModuleType:
    """``bench/<name>.py`` imported under the module name ``bench_<name>``."""
    bench = str(ROOT / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
