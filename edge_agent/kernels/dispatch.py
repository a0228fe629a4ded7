"""One kernel source, two ways to compile it: the ahead-of-time module on the device, the JIT
on the desk.

Every Numba kernel of the pipeline (``edge_agent.data.grid``, ``edge_agent.detect.*``,
``edge_agent.pipeline``) is written once as ``@njit``-style Python and decorated here:

* :func:`kernel` marks a kernel the daemon calls from Python, with its one signature
  (``edge_agent.kernels.signature``). ``scripts/build-kernels`` compiles these with
  ``numba.pycc`` into one extension module, ``_aot_<digest>``, where ``digest`` is a hash of
  every kernel source file (:data:`KERNEL_SOURCES`). Loading that module needs neither
  Numba nor LLVM; its functions are called behind argument guards (or, on the per-row hot
  path, with their fixed arguments checked once: ``edge_agent.kernels.bind``).
* :func:`jit` marks a helper that compiled code calls, and kernels only the desk calls
  (training, ``prepare``). They are compiled into the module through the kernels that call
  them; called from Python, they need Numba.

Which backend runs is decided once per process, at the first decorated kernel, by
``EDGE_KERNELS``: ``auto`` (default) takes the compiled module if one matches these sources
and this interpreter (its file name carries the digest and Python's extension suffix, which
names the ABI and the architecture), else Numba's JIT; ``aot`` and ``jit`` insist on one.
With neither, importing works and the first kernel call raises :class:`KernelsUnavailable`
naming what to build or install. ``EDGE_KERNELS_DIR`` names the directory searched instead of
the package's own (tests, a staged build).

The JIT caches on disk keyed on all kernel sources together (``edge_agent.kernels.jitcache``):
editing a kernel in one file invalidates the fused kernels of the others that inline it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, TypeVar

from edge_agent.kernels.bind import register
from edge_agent.kernels.signature import Signature, make_guard, parse_signature
from edge_agent.kernels.sources import KERNEL_SOURCES, PACKAGE_DIR, sources_digest

F = TypeVar("F", bound=Callable[..., Any])

MODE_ENV = "EDGE_KERNELS"
DIR_ENV = "EDGE_KERNELS_DIR"
MODES = ("auto", "aot", "jit")
MODULE_DIR = Path(__file__).resolve().parent  # where the build puts the module by default
MODULE_PREFIX = "_aot_"
# Hex digits of the sources' SHA-256 in the module name (64 bits: no accidental match).
DIGEST_CHARS = 16
INSTALL_HINT = (
    "build the compiled kernels with scripts/build-kernels (needs numba and a C compiler at "
    "build time only; systemd/install.sh does this on a gateway), or install numba to "
    "JIT-compile them: pip install 'edge-anomaly[jit]'"
)


class KernelsUnavailable(RuntimeError):
    """No backend can run the kernels: no matching compiled module, and no Numba."""


@dataclass(frozen=True)
class Backend:
    """What runs the kernels in this process."""

    kind: Literal["aot", "jit", "none"]
    detail: str  # the module's path, Numba's version, or why neither is there
    digest: str  # of the kernel sources


@dataclass(frozen=True)
class Exported:
    """An exported kernel as the build sees it (JIT mode only)."""

    name: str
    py_func: Callable[..., Any]
    signature: Signature


EXPORTS: dict[str, Exported] = {}
_state: dict[str, Any] = {"backend": None, "module": None, "deferred": []}


def module_name(digest: str) -> str:
    """The compiled module's import name for sources with this digest."""
    return MODULE_PREFIX + digest[:DIGEST_CHARS]


def module_filename(digest: str) -> str:
    """Its file name for this interpreter (the suffix names the ABI and architecture)."""
    return module_name(digest) + importlib.machinery.EXTENSION_SUFFIXES[0]


def search_dirs() -> list[Path]:
    chosen = os.environ.get(DIR_ENV)
    return [Path(chosen)] if chosen else [MODULE_DIR]


def _load_module(digest: str) -> tuple[ModuleType | None, str]:
    """The compiled module for ``digest``, or None and where it was looked for."""
    name = module_name(digest)
    looked = []
    for d in search_dirs():
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = d / (name + suffix)
            looked.append(str(path))
            if not path.is_file():
                continue
            loader = importlib.machinery.ExtensionFileLoader(name, str(path))
            spec = importlib.util.spec_from_file_location(name, path, loader=loader)
            if spec is None:  # pragma: no cover - a file with an extension suffix
                continue
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
            return module, str(path)
    return None, " or ".join(looked[:1]) + (f" (and {len(looked) - 1} more)" if looked else "")


def _numba_version() -> str | None:
    try:
        import numba
    except ImportError:
        return None
    return str(numba.__version__)


def resolve() -> Backend:
    """Pick the backend once per process (see the module docstring)."""
    backend: Backend | None = _state["backend"]
    if backend is not None:
        return backend
    mode = os.environ.get(MODE_ENV, "auto")
    if mode not in MODES:
        raise KernelsUnavailable(f"{MODE_ENV}={mode!r} is not one of {', '.join(MODES)}")
    digest = sources_digest()
    why = ""
    if mode in ("auto", "aot"):
        module, where = _load_module(digest)
        if module is not None:
            _state["module"] = module
            backend = Backend("aot", where, digest)
        else:
            why = f"no compiled kernels match these sources ({where})"
    if backend is None and mode in ("auto", "jit"):
        version = _numba_version()
        if version is not None:
            from edge_agent.kernels import jitcache

            _state["cache"] = jitcache.install(digest)
            backend = Backend("jit", f"numba {version}", digest)
        else:
            why = "; ".join(filter(None, [why, "numba is not installed"]))
    if backend is None:
        backend = Backend("none", why, digest)
    _state["backend"] = backend
    return backend


def backend() -> Backend:
    """The backend this process runs its kernels on (resolved on first use)."""
    return resolve()


def require() -> Backend:
    """The backend, or :class:`KernelsUnavailable` saying what to build or install."""
    b = resolve()
    if b.kind == "none":
        raise KernelsUnavailable(f"cannot run the pipeline's kernels: {b.detail}; {INSTALL_HINT}")
    return b


def _source_file(fn: Callable[..., Any]) -> str:
    path = Path(fn.__code__.co_filename).resolve()
    try:
        rel = path.relative_to(PACKAGE_DIR).as_posix()
    except ValueError:
        rel = str(path)
    if rel not in KERNEL_SOURCES:
        raise RuntimeError(
            f"kernel {fn.__name__} is in {rel}, which is not in "
            f"edge_agent.kernels.dispatch.KERNEL_SOURCES: add it there"
        )
    return rel


def _njit(fn: Callable[..., Any]) -> Any:
    import numba

    return numba.njit(cache=bool(_state.get("cache", True)))(fn)


def _unavailable(name: str) -> Callable[..., Any]:
    def stub(*_args: Any) -> Any:
        require()  # raises with the reason
        raise KernelsUnavailable(f"kernel {name} is not available")  # pragma: no cover

    stub.__name__ = stub.__qualname__ = name
    return stub


def kernel(signature: str) -> Callable[[F], F]:
    """Decorate a kernel the daemon calls from Python; it is compiled ahead of time with
    ``signature`` and called through argument guards when the compiled module runs."""

    def decorate(fn: F) -> F:
        name = fn.__name__
        sig = parse_signature(signature, where=f"{_source_file(fn)}: {name}")
        b = resolve()
        if b.kind == "aot":
            target = getattr(_state["module"], name, None)
            if target is None:
                raise KernelsUnavailable(f"{b.detail} has no kernel {name}; rebuild it")
            guarded = make_guard(name, sig, target)
            register(guarded, name, sig, target)
            return guarded  # type: ignore[return-value]
        if b.kind == "none":
            return _unavailable(name)  # type: ignore[return-value]
        if name in EXPORTS and EXPORTS[name].py_func is not fn:
            raise RuntimeError(f"two exported kernels are named {name}")
        EXPORTS[name] = Exported(name, fn, sig)
        return _njit(fn)  # type: ignore[no-any-return]

    return decorate


class _Deferred:
    """A desk-side kernel in a process running the compiled module: compiled by Numba on its
    first call from Python (with every other deferred kernel, so that they can call each
    other), or refused with :class:`KernelsUnavailable` where Numba is absent."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.py_func = fn
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self._compiled: Any = None

    def __call__(self, *args: Any) -> Any:
        if self._compiled is None:
            _compile_deferred(self.__name__)
        return self._compiled(*args)


def _compile_deferred(caller: str) -> None:
    if _numba_version() is None:
        raise KernelsUnavailable(
            f"{caller} is a desk-side kernel, not part of the compiled device kernels: it needs "
            f"numba (pip install 'edge-anomaly[jit]')"
        )
    from edge_agent.kernels import jitcache

    _state["cache"] = jitcache.install(resolve().digest)
    deferred: list[_Deferred] = _state["deferred"]
    for d in deferred:
        if d._compiled is None:
            d._compiled = _njit(d.py_func)
    # Compiled callers look their callees up in their module's globals, imported names too.
    for rel in KERNEL_SOURCES:
        module = sys.modules.get("edge_agent." + rel.removesuffix(".py").replace("/", "."))
        if module is None:
            continue
        for key, value in list(vars(module).items()):
            if isinstance(value, _Deferred) and value._compiled is not None:
                setattr(module, key, value._compiled)


def jit(fn: F) -> F:
    """Decorate a helper of compiled kernels, or a kernel only the desk calls."""
    _source_file(fn)
    b = resolve()
    if b.kind == "jit":
        return _njit(fn)  # type: ignore[no-any-return]
    d = _Deferred(fn)
    _state["deferred"].append(d)
    return d  # type: ignore[return-value]
