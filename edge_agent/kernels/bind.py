"""Kernel calls for the per-row hot path: fixed arguments checked once, not at every row.

Sits between the compiled kernels (``edge_agent.kernels.dispatch``) and the stages that call
them once per pushed row (``edge_agent.pipeline``, ``edge_agent.detect.*``). A guarded
kernel checks all its arguments at every call (``edge_agent.kernels.signature``): about half
a microsecond per argument, ten microseconds a row for ``pipeline._front`` and its nineteen
arguments, which is most of what the compiled module lost to the JIT. Most of those arguments
are the stage's own state and model arrays, made once and never replaced; :func:`bind` checks
them once, where the stage makes them, and returns a callable that takes only the arguments
marked :data:`CALL` and checks only those, in the same way, at each call::

    self._front = bind(_front, CALL, CALL, mean, scale, ...)   # checks mean, scale, ... now
    self._front(ts, values)                                    # checks ts and values only

On the JIT (the desk) the bound callable only supplies the fixed arguments: Numba's
dispatcher types every call itself. Whatever is bound must stay what it was when bound: the
stages mutate their state arrays in place and never reshape, replace or freeze them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

from edge_agent.kernels.signature import KernelArgumentError, Signature, argument_checks

R = TypeVar("R")


class _PerCall:
    """Marks an argument given at every call of a bound kernel."""

    def __repr__(self) -> str:
        return "CALL"


CALL: Final = _PerCall()
# Guarded kernels of the compiled module: their name, signature and the unguarded function.
_GUARDED: dict[Callable[..., Any], tuple[str, Signature, Callable[..., Any]]] = {}


def register(guarded: Callable[..., Any], name: str, sig: Signature, target: Any) -> None:
    """Let :func:`bind` see through a guarded kernel (called by the dispatcher)."""
    _GUARDED[guarded] = (name, sig, target)


def bind(fn: Callable[..., R], *args: Any) -> Callable[..., R]:
    """``fn`` with every argument not :data:`CALL` fixed; those are checked now (raising
    :class:`KernelArgumentError` as a call would) when ``fn`` is a guarded compiled kernel."""
    per_call = tuple(i for i, a in enumerate(args) if a is CALL)
    entry = _GUARDED.get(fn)
    if entry is None:  # the JIT, a desk-side wrapper, or no backend: nothing to check here
        return _assemble(fn, args, per_call, None)
    name, sig, target = entry
    if len(args) != len(sig.args):
        raise KernelArgumentError(f"kernel {name} takes {len(sig.args)} arguments, got {len(args)}")
    checks = argument_checks(name, sig)
    fixed = [a if a is CALL else checks[i](a) for i, a in enumerate(args)]
    return _assemble(target, tuple(fixed), per_call, tuple(checks[i] for i in per_call))


def _same(value: Any) -> Any:
    return value


def _assemble(
    target: Callable[..., R],
    args: tuple[Any, ...],
    per_call: tuple[int, ...],
    checks: tuple[Callable[[Any], Any], ...] | None,
) -> Callable[..., R]:
    n = len(per_call)
    leading = per_call == tuple(range(n))
    rest = args[n:]
    if leading and checks is None:

        def call_leading(*given: Any) -> R:
            return target(*given, *rest)

        return call_leading
    if leading and n == 1 and checks is not None:
        check0 = checks[0]

        def call_one(a: Any) -> R:
            return target(check0(a), *rest)

        return call_one
    if leading and n == 2 and checks is not None:
        check0, check1 = checks

        def call_two(a: Any, b: Any) -> R:
            return target(check0(a), check1(b), *rest)

        return call_two

    if n == 2:
        # Two per-call arguments anywhere (the int8 dequantizer: its input first, its output
        # last): the fixed ones around them as tuples, no list built per call.
        i, j = per_call
        head, mid, tail = args[:i], args[i + 1 : j], args[j + 1 :]
        check_a, check_b = checks if checks is not None else (_same, _same)

        def call_two_apart(*given: Any) -> R:
            if len(given) != 2:
                raise KernelArgumentError(f"bound kernel takes 2 arguments, got {len(given)}")
            a, b = given
            return target(*head, check_a(a), *mid, check_b(b), *tail)

        return call_two_apart

    template = list(args)

    def call_any(*given: Any) -> R:
        if len(given) != n:
            raise KernelArgumentError(f"bound kernel takes {n} arguments, got {len(given)}")
        full = template.copy()
        for k, (i, a) in enumerate(zip(per_call, given, strict=True)):
            full[i] = a if checks is None else checks[k](a)
        return target(*full)

    return call_any
