"""Returning arrays from the compiled module without unpickling ``numpy.ndarray`` at each one.

Used by the ahead-of-time build (``edge_agent.kernels.build``) while ``numba.pycc`` generates
the module's Python wrappers; the device never imports this. Numba boxes an array a kernel
returns by embedding the array's Python class (``numpy.ndarray``) as pickled bytes and
unpickling them at every return. The JIT memoizes that unpickling; the module ``pycc`` builds
calls ``pickle.loads`` every time: about 0.35 us more per returned array, measured, and the
daemon gets about ten arrays back per streamed row. Here, for the build only, the class is put
in the kernel's environment constants instead (unpickled once, when the module loads), where
Numba already keeps the array's dtype, and read back from there: the same object, passed to
the same Numba runtime function, with the same new reference that unpickling gave.

This hooks Numba's boxing registry and the ``PythonAPI`` object of the wrapper being generated
(``numba.core.pythonapi._boxers``, ``serialize_object``/``unserialize``: not a public API).
Where those are missing the build keeps Numba's own boxing: slower returns, same results.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)


class _Constant:
    """An object ``serialize_object`` was asked to embed, handed on to ``unserialize``."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _boxer_with_env_constants(stock: Callable[..., Any]) -> Callable[..., Any]:
    """Numba's array boxer with the objects it embeds read from the environment constants."""

    def box_array(typ: Any, val: Any, c: Any) -> Any:
        api, env = c.pyapi, c.env_manager

        def embed(obj: Any) -> _Constant:
            return _Constant(obj)

        def load(const: Any) -> Any:
            if not isinstance(const, _Constant):  # pragma: no cover - not the array's class
                raise TypeError(f"unexpected serialized object {const!r} while boxing an array")
            obj = env.read_const(env.add_const(const.value))  # a borrowed reference
            api.incref(obj)  # unserialize returns a new one
            return obj

        api.serialize_object, api.unserialize = embed, load
        try:
            return stock(typ, val, c)
        finally:
            del api.serialize_object, api.unserialize

    box_array.__wrapped__ = stock  # type: ignore[attr-defined]
    return box_array


@contextlib.contextmanager
def array_returns_from_environment() -> Iterator[bool]:
    """While active, compiled wrappers box returned arrays as described in the module
    docstring; yields whether the hook is in place (False: Numba's own boxing)."""
    try:
        importlib.import_module("numba.core.boxing")  # registers the stock boxers
        pythonapi = importlib.import_module("numba.core.pythonapi")
        types = importlib.import_module("numba.core.types")
        registry: dict[Any, Callable[..., Any]] = pythonapi._boxers.functions
        stock = registry[types.Array]
        for method in ("serialize_object", "unserialize"):
            getattr(pythonapi.PythonAPI, method)  # shadowed per wrapper while boxing
    except (ImportError, AttributeError, KeyError) as exc:
        log.warning("numba's array boxing is not where this build expects it (%s): "
                    "the compiled module returns arrays the slower stock way", exc)  # fmt: skip
        yield False
        return
    registry[types.Array] = _boxer_with_env_constants(stock)
    try:
        yield True
    finally:
        registry[types.Array] = stock
