"""The hot path's bound kernels (fixed arguments checked once) keep the guards' safety: a bad
fixed argument is refused when bound, a bad per-call one at the call, and the compiled kernel
computes exactly what the guarded call does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from edge_agent.kernels import CALL, KernelArgumentError, bind

Kernels = dict[str, Callable[..., Any]]
RAW = np.array([True, True, False, True, True, True])


def test_bound_matches_guarded(aot: Kernels) -> None:
    state_a, state_b = np.zeros(3, np.int64), np.zeros(3, np.int64)
    bound = bind(aot["_hysteresis"], CALL, CALL, 2, 3, state_a)
    for chunk in (RAW[:2], RAW[2:3], RAW[3:]):
        want = aot["_hysteresis"](chunk, chunk, 2, 3, state_b)
        assert bound(chunk, chunk).tolist() == want.tolist()
        assert state_a.tolist() == state_b.tolist()  # the bound state is updated in place
    assert state_a.tolist() == [1, 3, 0]


@pytest.mark.parametrize(
    ("fixed", "says", "index"),
    [
        ((2, 3, np.zeros(3, np.int32)), "dtype int32", 4),  # would segfault unguarded
        ((2, 3, [0, 0, 0]), "got a list", 4),
        ((2, 3, np.zeros(6, np.int64)[::2]), "non-contiguous", 4),  # silently wrong unguarded
        ((2.5, 3, np.zeros(3, np.int64)), "an integer", 2),
    ],
)
def test_bad_fixed_argument_is_refused_when_bound(
    aot: Kernels, fixed: tuple[Any, ...], says: str, index: int
) -> None:
    with pytest.raises(KernelArgumentError, match=says) as err:
        bind(aot["_hysteresis"], CALL, CALL, *fixed)
    assert f"argument {index}" in str(err.value)


def test_read_only_state_is_refused_when_bound(aot: Kernels) -> None:
    state = np.zeros(3, np.int64)
    state.flags.writeable = False
    with pytest.raises(KernelArgumentError, match="read-only"):
        bind(aot["_hysteresis"], CALL, CALL, 2, 3, state)
    with pytest.raises(KernelArgumentError, match="takes 5 arguments, got 4"):
        bind(aot["_hysteresis"], CALL, CALL, 2, 3)


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (np.zeros(3, np.int32), "dtype int32"),
        ([True, False], "got a list"),
        (np.array([True, False] * 3)[::2], "non-contiguous"),
        (np.zeros((3, 1), np.bool_), "2-d shape"),
    ],
)
def test_bad_per_call_argument_is_refused_at_the_call(aot: Kernels, bad: Any, says: str) -> None:
    state = np.zeros(3, np.int64)
    bound = bind(aot["_hysteresis"], CALL, CALL, 2, 3, state)
    with pytest.raises(KernelArgumentError, match=says):
        bound(bad, RAW)
    with pytest.raises(KernelArgumentError, match=says):
        bound(RAW, bad)
    assert state.tolist() == [0, 0, 0]  # nothing ran


def test_per_call_arguments_anywhere(aot: Kernels) -> None:
    """The dequantization binds its scale and zero point between two per-call arrays."""
    y = np.arange(-6, 6, dtype=np.int8).reshape(2, 3, 2)
    out_bound, out_guarded = np.empty((2, 3, 2), np.float32), np.empty((2, 3, 2), np.float32)
    bound = bind(aot["_dequantize_kernel"], CALL, 0.25, 1, CALL)
    bound(y, out_bound)
    aot["_dequantize_kernel"](y, 0.25, 1, out_guarded)
    assert out_bound.tobytes() == out_guarded.tobytes()
    frozen = np.zeros((2, 3, 2), np.float32)
    frozen.flags.writeable = False
    with pytest.raises(KernelArgumentError, match="read-only") as err:
        bound(y, frozen)
    assert "argument 3" in str(err.value)  # named by its place in the kernel's signature
    with pytest.raises(KernelArgumentError, match="takes 2 arguments, got 1"):
        bound(y)


def test_scalars_are_converted_once(aot: Kernels) -> None:
    state = np.zeros(3, np.int64)
    bound = bind(aot["_hysteresis"], CALL, CALL, np.int32(2), np.int64(3), state)
    assert bound(RAW, RAW).tolist() == [False, True, True, True, True, True]


def test_plain_callable_gets_its_fixed_arguments() -> None:
    """On the JIT (or for any other callable) bind only supplies the fixed arguments."""

    def add(a: int, b: int, c: int) -> int:
        return a * 100 + b * 10 + c

    assert bind(add, CALL, 2, 3)(1) == 123
    assert bind(add, 1, CALL, 3)(2) == 123
