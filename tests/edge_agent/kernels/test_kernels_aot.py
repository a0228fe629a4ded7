"""The compiled kernels are the JIT's kernels: bit-identical outputs and state on recorded
streaming and batch calls, and guarded entry points that refuse what would crash or
mis-compute."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.bundle.verify import verify_bundle
from edge_agent.data.table import read_table
from edge_agent.kernels import KernelArgumentError
from edge_agent.kernels.dispatch import EXPORTS
from edge_agent.model_slot import load_cascade
from edge_agent.pipeline import StreamingPipeline, run_pipeline

Call = tuple[str, list[Any], Any, list[Any]]  # name, args before, result, args after
STREAMED_ROWS = 400  # pushed one at a time, as the daemon does
EXPORTED = {
    "_front", "_score_kernel", "_error_kernel", "_quantize_kernel", "_dequantize_kernel",
    "_tail_kernel", "_hysteresis", "sample_stats_kernel",
}  # fmt: skip


def _copy(value: Any) -> Any:
    return value.copy() if isinstance(value, np.ndarray) else value


def _bits(value: Any) -> Any:
    """Something whose == is bit-identity (NaN payloads and signed zeros included)."""
    if isinstance(value, tuple):
        return tuple(_bits(v) for v in value)
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, float):
        return np.float64(value).tobytes()
    return value


@pytest.fixture
def recorded(
    bundle: Path, keys: Path, sim_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> list[Call]:
    """Every exported kernel call (on the JIT) of a streamed and a batch run."""
    calls: list[Call] = []
    for name, entry in EXPORTS.items():
        module = importlib.import_module(entry.py_func.__module__)
        jitted = getattr(module, name)

        def recorder(*args: Any, _n: str = name, _f: Callable[..., Any] = jitted) -> Any:
            before = [_copy(a) for a in args]
            out = _f(*args)
            calls.append((_n, before, _copy(out), [_copy(a) for a in args]))
            return out

        monkeypatch.setattr(module, name, recorder)
    b = verify_bundle(bundle, keys / "signing.pub")
    manifest, cascade = b.manifest, load_cascade(b)
    table = read_table(sim_csv, channels=manifest.channel_names).select(manifest.channel_names)
    ts, values = table.timestamps, table.values.copy()
    values[::97, 0] = np.nan  # held and imputed cells
    stream = StreamingPipeline(manifest, cascade)
    for i in range(STREAMED_ROWS):
        stream.push(ts[i : i + 1], values[i : i + 1])
    stream.push(ts[STREAMED_ROWS:], values[STREAMED_ROWS:])
    run_pipeline(table, manifest, cascade, screen=False)  # batch, every window to stage 2
    return calls


def test_recorded_calls_are_bit_identical(
    recorded: list[Call], aot: dict[str, Callable[..., Any]]
) -> None:
    assert {c[0] for c in recorded} == EXPORTED == set(aot)
    for i, (name, before, result, after) in enumerate(recorded):
        args = [_copy(a) for a in before]
        out = aot[name](*args)
        assert _bits(out) == _bits(result), f"call {i} to {name}: outputs differ"
        for k, (got, want) in enumerate(zip(args, after, strict=True)):
            assert _bits(got) == _bits(want), f"call {i} to {name}: state argument {k} differs"


def _hysteresis_args() -> list[Any]:
    raw = np.array([True, True, True])
    return [raw, raw.copy(), 2, 2, np.zeros(3, np.int64)]


@pytest.mark.parametrize(
    ("index", "bad", "says"),
    [
        (4, np.zeros(3, np.int32), "dtype int32"),  # an int32 state array segfaults unguarded
        (4, [0, 0, 0], "got a list"),
        (0, np.array([True, False] * 3)[::2], "non-contiguous"),  # silently wrong unguarded
        (1, np.zeros((3, 1), np.bool_), "2-d shape"),
        (2, "2", "an integer"),
        (2, 2.0, "an integer"),
        (2, 2**70, "fits int64"),
        (3, True, "an integer"),
    ],
)
def test_guard_refuses(aot: dict[str, Callable[..., Any]], index: int, bad: Any, says: str) -> None:
    args = _hysteresis_args()
    args[index] = bad
    with pytest.raises(KernelArgumentError, match=says) as err:
        aot["_hysteresis"](*args)
    assert "_hysteresis" in str(err.value)
    assert f"argument {index}" in str(err.value)


def test_guard_refuses_read_only_state(aot: dict[str, Callable[..., Any]]) -> None:
    args = _hysteresis_args()
    args[4].flags.writeable = False
    with pytest.raises(KernelArgumentError, match="read-only"):
        aot["_hysteresis"](*args)
    with pytest.raises(KernelArgumentError, match="takes 5 arguments, got 4"):
        aot["_hysteresis"](*args[:4])


def test_guard_converts_numpy_scalars(aot: dict[str, Callable[..., Any]]) -> None:
    args = _hysteresis_args()
    state = args[4]
    out = aot["_hysteresis"](args[0], args[1], np.int64(2), np.int32(2), state)
    assert out.tolist() == [False, True, True]
    assert state.tolist() == [1, 3, 0]
    scores = np.array([0.1, np.nan, 5.0])
    table = (np.array([0.0, 1.0]), np.array([1.0, 2.0]))
    p = aot["_tail_kernel"](scores, *table, np.False_, 0, 1, 0, 1, True)  # ints as reals
    assert p.dtype == np.float64
    assert np.isnan(p[1])
    with pytest.raises(KernelArgumentError, match="a bool"):
        aot["_tail_kernel"](scores, *table, 0, 0.0, 1.0, 0.0, 1.0, True)
    with pytest.raises(KernelArgumentError, match="a real number"):
        aot["_tail_kernel"](scores, *table, False, None, 1.0, 0.0, 1.0, True)


def test_every_guard_refuses_each_bad_argument(
    recorded: list[Call], aot: dict[str, Callable[..., Any]]
) -> None:
    """Every exported kernel's guard (written out for up to four arguments, generic above),
    on a real call: a list in place of each array, and one argument too few, are refused."""
    first = {name: before for name, before, _, _ in reversed(recorded)}
    assert set(first) == EXPORTED
    for name, args in first.items():
        with pytest.raises(KernelArgumentError, match=f"takes {len(args)} arguments, got"):
            aot[name](*args[:-1])
        for i, a in enumerate(args):
            if not isinstance(a, np.ndarray):
                continue
            bad = [_copy(x) for x in args]
            bad[i] = a.tolist()
            with pytest.raises(KernelArgumentError, match=f"argument {i} must be") as err:
                aot[name](*bad)
            assert name in str(err.value)
            assert "got a list" in str(err.value)
