"""The compiled module returns arrays without unpickling at each return
(``edge_agent.kernels.boxing``), and the build leaves Numba's boxing as it found it."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.kernels.boxing import array_returns_from_environment
from edge_agent.kernels.dispatch import backend, module_filename, module_name

ROOT = Path(__file__).resolve().parents[3]
CALLS = 200
RUN_TIMEOUT_S = 120
# Loads the module after replacing pickle.loads with a counter (the module's runtime looks
# pickle.loads up once, at its first unpickling: loading its environment constants), then
# calls a kernel that returns an array.
PROBE = """
import importlib.machinery, importlib.util, pickle, sys
import numpy as np
count = [0]
real = pickle.loads
def counting(data, *args, **kwargs):
    count[0] += 1
    return real(data, *args, **kwargs)
pickle.loads = counting
path, name, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
loader = importlib.machinery.ExtensionFileLoader(name, path)
spec = importlib.util.spec_from_file_location(name, path, loader=loader)
module = importlib.util.module_from_spec(spec)
loader.exec_module(module)
loaded = count[0]
raw, state = np.array([True, False, True]), np.zeros(3, np.int64)
refs = sys.getrefcount(np.ndarray)
for _ in range(calls):
    out = module._hysteresis(raw, raw, 1, 1, state)
assert type(out) is np.ndarray and out.tolist() == [True, False, True], out
print(loaded, count[0] - loaded, sys.getrefcount(np.ndarray) - refs)
"""


def test_returned_arrays_are_not_unpickled(aot_dir: Path) -> None:
    digest = backend().digest
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(aot_dir / module_filename(digest)),
         module_name(digest), str(CALLS)],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded, per_calls, refs = (int(v) for v in proc.stdout.split())
    assert loaded >= 1, "the counter must see the module's own unpickling, or it proves nothing"
    assert per_calls == 0, f"{per_calls} unpickles for {CALLS} returned arrays"
    # A return takes the reference unpickling gave, which Numba's runtime keeps today; never
    # fewer (a release of one it did not take would end by freeing the class).
    assert 0 <= refs <= CALLS


def _array_boxer() -> object:
    importlib.import_module("numba.core.boxing")
    pythonapi = importlib.import_module("numba.core.pythonapi")
    types = importlib.import_module("numba.core.types")
    return pythonapi._boxers.functions[types.Array]


def test_the_build_restores_numbas_boxing() -> None:
    stock = _array_boxer()
    with array_returns_from_environment() as hooked:
        assert hooked
        assert _array_boxer() is not stock
    assert _array_boxer() is stock
    with pytest.raises(RuntimeError, match="inside"), array_returns_from_environment():
        raise RuntimeError("a failure inside the build")
    assert _array_boxer() is stock


def test_a_kernel_compiled_under_the_hook_returns_the_same_arrays() -> None:
    numba = importlib.import_module("numba")

    def pair(n: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
        a = np.arange(n, dtype=np.float32)
        return a, (a * 2).astype(np.int64).reshape(n, 1)

    with array_returns_from_environment():
        compiled = numba.njit(pair)
        a, b = compiled(5)  # compiled (wrapper included) here, under the hook
    for _ in range(3):
        a, b = compiled(5)
    assert type(a) is np.ndarray
    assert a.dtype == np.float32
    assert a.tolist() == [0, 1, 2, 3, 4]
    assert a.flags.writeable
    assert b.dtype == np.int64
    assert b.tolist() == [[0], [2], [4], [6], [8]]


def test_without_numbas_registry_the_build_keeps_stock_boxing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stock = _array_boxer()
    pythonapi = importlib.import_module("numba.core.pythonapi")
    monkeypatch.delattr(pythonapi, "_boxers")
    with caplog.at_level(logging.WARNING), array_returns_from_environment() as hooked:
        assert not hooked
    assert "slower stock way" in caplog.text
    monkeypatch.undo()
    assert _array_boxer() is stock
