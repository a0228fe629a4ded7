"""Kernel signatures without Numba: what each exported kernel takes, and the guard that checks it.

Sits under every compiled kernel (``edge_agent.kernels.dispatch``). An exported kernel declares
one signature in a small notation, next to its source:

``"f4[:,:], i4[:], f8 -> (f8[:], b1)"``

* an array is a dtype code and its dimensions; it is always C-contiguous and aligned, and a
  trailing ``!`` marks an array the kernel writes into (state, output buffers), which must be
  writeable;
* a scalar is a bare dtype code: ``f8`` (a real number), ``i8`` (an integer), ``b1`` (a bool);
* the result is one type, a parenthesised tuple of types, or ``none``.

dtype codes: ``f4 f8 i1 i4 i8 b1``. The build (``edge_agent.kernels.build``) turns the same
text into Numba types; at run time :func:`make_guard` turns it into a check run before each
call. Functions exported by ``numba.pycc`` check nothing (an int32 state array or a list
crashes the process; a strided view gives wrong numbers silently), so every call through the
compiled module, and through the JIT for the same behaviour on the desk, is checked here first
and refused with :class:`KernelArgumentError` naming the kernel, the argument and what was
expected.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

DTYPES: dict[str, np.dtype[Any]] = {
    "f4": np.dtype(np.float32),
    "f8": np.dtype(np.float64),
    "i1": np.dtype(np.int8),
    "i4": np.dtype(np.int32),
    "i8": np.dtype(np.int64),
    "b1": np.dtype(np.bool_),
}
SCALAR_CODES = ("f8", "i8", "b1")
ARROW = "->"
NONE = "none"
WRITES = "!"
INT64_MIN = int(np.iinfo(np.int64).min)
INT64_MAX = int(np.iinfo(np.int64).max)


class KernelArgumentError(TypeError):
    """A kernel was called with an argument its compiled signature cannot take."""


@dataclass(frozen=True, slots=True)
class TypeSpec:
    """One argument or result: ``ndim == 0`` for a scalar."""

    code: str
    ndim: int
    writes: bool = False

    @property
    def dtype(self) -> np.dtype[Any]:
        return DTYPES[self.code]

    def text(self) -> str:
        dims = "" if self.ndim == 0 else "[" + ",".join([":"] * self.ndim) + "]"
        return self.code + dims + (WRITES if self.writes else "")


@dataclass(frozen=True, slots=True)
class Signature:
    """A kernel's arguments and results, parsed from the notation in the module docstring."""

    args: tuple[TypeSpec, ...]
    result: tuple[TypeSpec, ...]  # empty: returns nothing
    result_is_tuple: bool

    def text(self) -> str:
        if not self.result:
            ret = NONE
        elif self.result_is_tuple:
            ret = "(" + ", ".join(r.text() for r in self.result) + ")"
        else:
            ret = self.result[0].text()
        return ", ".join(a.text() for a in self.args) + f" {ARROW} " + ret


def _parse_type(text: str, *, where: str, is_arg: bool) -> TypeSpec:
    t = text.strip()
    writes = t.endswith(WRITES)
    if writes:
        t = t[: -len(WRITES)]
    code, _, dims = t.partition("[")
    if code not in DTYPES:
        raise ValueError(f"{where}: unknown dtype code {code!r} in {text!r}; know {list(DTYPES)}")
    if not dims:
        if writes:
            raise ValueError(f"{where}: only an array can be written into, got {text!r}")
        if code not in SCALAR_CODES:
            raise ValueError(f"{where}: scalar {code!r} not supported; use one of {SCALAR_CODES}")
        return TypeSpec(code, 0)
    parts = dims.rstrip("]").split(",")
    if not dims.endswith("]") or any(p.strip() != ":" for p in parts):
        raise ValueError(f"{where}: array dimensions must read [:] or [:,:]..., got {text!r}")
    if writes and not is_arg:
        raise ValueError(f"{where}: a result cannot be marked {WRITES!r}: {text!r}")
    return TypeSpec(code, len(parts), writes)


def parse_signature(text: str, *, where: str = "signature") -> Signature:
    """``"f8[:], i8 -> f8[:]"`` -> :class:`Signature`; ``ValueError`` names what is wrong."""
    if text.count(ARROW) != 1:
        raise ValueError(f"{where}: expected 'ARGS {ARROW} RESULT', got {text!r}")
    args_text, ret_text = (s.strip() for s in text.split(ARROW))
    args = tuple(_parse_type(a, where=where, is_arg=True) for a in _split(args_text) if a.strip())
    if ret_text == NONE:
        return Signature(args, (), False)
    if ret_text.startswith("(") and ret_text.endswith(")"):
        items = _split(ret_text[1:-1])
        result = tuple(_parse_type(r, where=where, is_arg=False) for r in items)
        return Signature(args, result, True)
    return Signature(args, (_parse_type(ret_text, where=where, is_arg=False),), False)


def _split(text: str) -> list[str]:
    """Split on the commas outside brackets."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


Check = Callable[[Any], Any]


def _array_check(kernel: str, index: int, spec: TypeSpec) -> Check:
    want, ndim, writes = spec.dtype, spec.ndim, spec.writes
    ndarray = np.ndarray

    def fail(value: Any, problem: str) -> KernelArgumentError:
        return KernelArgumentError(
            f"kernel {kernel}: argument {index} must be a C-contiguous, aligned "
            f"{'writeable ' if writes else ''}{ndim}-d {want} array, got {problem}"
        )

    def check(value: Any) -> Any:
        if not isinstance(value, ndarray):
            raise fail(value, f"a {type(value).__name__}")
        if value.dtype is not want and value.dtype != want:
            raise fail(value, f"dtype {value.dtype}")
        if value.ndim != ndim:
            raise fail(value, f"{value.ndim}-d shape {value.shape}")
        flags = value.flags
        if not (flags.c_contiguous and flags.aligned):
            raise fail(value, "a non-contiguous or unaligned view (pass np.ascontiguousarray)")
        if writes and not flags.writeable:
            raise fail(value, "a read-only array")
        return value

    return check


def _scalar_check(kernel: str, index: int, spec: TypeSpec) -> Check:
    def fail(value: Any, expected: str) -> KernelArgumentError:
        return KernelArgumentError(
            f"kernel {kernel}: argument {index} must be {expected}, "
            f"got {type(value).__name__} {value!r:.60}"
        )

    if spec.code == "f8":

        def check_real(value: Any) -> Any:
            if type(value) is float:
                return value
            if isinstance(value, bool | np.bool_) or not isinstance(
                value, int | float | np.integer | np.floating
            ):
                raise fail(value, "a real number")
            return float(value)

        return check_real
    if spec.code == "i8":

        def check_int(value: Any) -> Any:
            if type(value) is int and INT64_MIN <= value <= INT64_MAX:
                return value
            if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
                raise fail(value, "an integer")
            v = operator.index(value)
            if not INT64_MIN <= v <= INT64_MAX:
                raise fail(value, "an integer that fits int64")
            return v

        return check_int

    def check_bool(value: Any) -> Any:
        if type(value) is bool:
            return value
        if not isinstance(value, np.bool_):
            raise fail(value, "a bool")
        return bool(value)

    return check_bool


def argument_checks(kernel: str, signature: Signature) -> list[Check]:
    """One check per argument of ``signature``: returns the value to pass (scalars converted to
    exact Python types, arrays as they are) or raises :class:`KernelArgumentError`."""
    return [
        (_array_check if a.ndim else _scalar_check)(kernel, i, a)
        for i, a in enumerate(signature.args)
    ]


def make_guard(kernel: str, signature: Signature, target: Callable[..., Any]) -> Callable[..., Any]:
    """``target`` behind the checks of ``signature``: scalars are converted to exact Python
    types, arrays are passed as they are or refused. Kernels of up to four arguments get a
    guard written out for their count (no per-call list or zip: the daemon calls some of them
    once per row)."""
    checks = tuple(argument_checks(kernel, signature))
    count = len(checks)

    def wrong_count(given: int) -> KernelArgumentError:
        return KernelArgumentError(f"kernel {kernel} takes {count} arguments, got {given}")

    guarded: Callable[..., Any]
    if count == 1:
        (c0,) = checks

        def guarded(*args: Any) -> Any:
            if len(args) != 1:
                raise wrong_count(len(args))
            return target(c0(args[0]))

    elif count == 2:
        c0, c1 = checks

        def guarded(*args: Any) -> Any:
            if len(args) != 2:
                raise wrong_count(len(args))
            a0, a1 = args
            return target(c0(a0), c1(a1))

    elif count == 3:
        c0, c1, c2 = checks

        def guarded(*args: Any) -> Any:
            if len(args) != 3:
                raise wrong_count(len(args))
            a0, a1, a2 = args
            return target(c0(a0), c1(a1), c2(a2))

    elif count == 4:
        c0, c1, c2, c3 = checks

        def guarded(*args: Any) -> Any:
            if len(args) != 4:
                raise wrong_count(len(args))
            a0, a1, a2, a3 = args
            return target(c0(a0), c1(a1), c2(a2), c3(a3))

    else:

        def guarded(*args: Any) -> Any:
            if len(args) != count:
                raise wrong_count(len(args))
            return target(*[check(a) for check, a in zip(checks, args, strict=True)])

    guarded.__name__ = kernel
    guarded.__qualname__ = kernel
    guarded.__doc__ = f"{kernel}({signature.text()}), checked; see edge_agent.kernels."
    return guarded
