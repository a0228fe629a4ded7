"""Ahead-of-time build of the exported kernels into one extension module (``numba.pycc``).

Runs at install time on the gateway (``systemd/install.sh``, in a throw-away venv holding
Numba) or on a desk of the same architecture and Python (``scripts/build-kernels``). It imports
every kernel module with the JIT backend, so the exported kernels and every helper they call
are the same ``@njit`` source the desk JIT-compiles, and compiles the exported ones with their
declared signatures into ``_aot_<digest><EXT_SUFFIX>`` (see ``edge_agent.kernels.dispatch``).
The module needs libc and libm only: the gateway's runtime has no Numba and no LLVM. Its
wrappers return arrays as fast as the JIT's (``edge_agent.kernels.boxing``).

Usage: ``python -m edge_agent.kernels.build [--out DIR] [--target-cpu host|generic|CPU]``.
``host`` (the default) tunes the code for the CPU that builds it: right for a build on the
gateway itself; ``generic`` runs on any CPU of the architecture (prebuilt modules).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edge_agent.fsutil import atomic_write
from edge_agent.kernels.boxing import array_returns_from_environment
from edge_agent.kernels.dispatch import (
    EXPORTS,
    MODE_ENV,
    MODULE_DIR,
    MODULE_PREFIX,
    module_filename,
    module_name,
    resolve,
)
from edge_agent.kernels.signature import Signature, TypeSpec
from edge_agent.kernels.sources import KERNEL_SOURCES

EXECUTABLE_MODE = 0o755
BYTES_PER_MB = 1_000_000


def _numba(module: str) -> Any:
    """A Numba module, untyped (Numba ships partial annotations only)."""
    return importlib.import_module(module)


def _numba_type(spec: TypeSpec) -> Any:
    types = _numba("numba.core.types")
    scalar = {
        "f4": types.float32,
        "f8": types.float64,
        "i1": types.int8,
        "i4": types.int32,
        "i8": types.int64,
        "b1": types.boolean,
    }[spec.code]
    return types.Array(scalar, spec.ndim, "C") if spec.ndim else scalar


def numba_signature(sig: Signature) -> Any:
    """The Numba signature of a parsed kernel signature."""
    types = _numba("numba.core.types")
    if not sig.result:
        ret = types.void
    elif sig.result_is_tuple:
        ret = types.Tuple([_numba_type(r) for r in sig.result])
    else:
        ret = _numba_type(sig.result[0])
    return _numba("numba.core.typing").signature(ret, *(_numba_type(a) for a in sig.args))


def load_kernels() -> str:
    """Import every kernel module on the JIT backend; the sources' digest."""
    os.environ[MODE_ENV] = "jit"
    backend = resolve()
    if backend.kind != "jit":
        raise SystemExit(
            f"build-kernels: the kernels must load with Numba's JIT to be compiled, but this "
            f"process runs them on {backend.kind} ({backend.detail}); run the build in a fresh "
            f"process with numba installed (pip install 'edge-anomaly[jit]')"
        )
    for rel in KERNEL_SOURCES:
        importlib.import_module("edge_agent." + rel.removesuffix(".py").replace("/", "."))
    return backend.digest


def build(out_dir: Path, *, target_cpu: str = "host", verbose: bool = False) -> Path:
    """Compile the exported kernels into ``out_dir``; the module's path. Older builds of other
    sources there are removed."""
    digest = load_kernels()
    cc_class = _numba("numba.pycc").CC
    out_dir.mkdir(parents=True, exist_ok=True)
    name = module_name(digest)
    with tempfile.TemporaryDirectory(prefix="build-kernels-", dir=out_dir) as tmp:
        cc = cc_class(name, source_module=sys.modules[__name__])
        cc.output_dir = tmp
        cc.verbose = verbose
        cc.target_cpu = "" if target_cpu == "generic" else target_cpu
        for entry in sorted(EXPORTS.values(), key=lambda e: e.name):
            cc.export(entry.name, numba_signature(entry.signature))(entry.py_func)
        with array_returns_from_environment():
            cc.compile()
        built = Path(tmp) / cc.output_file
        dest = out_dir / module_filename(digest)
        atomic_write(dest, built.read_bytes(), mode=EXECUTABLE_MODE)
    suffix = dest.name.removeprefix(name)
    for old in out_dir.glob(MODULE_PREFIX + "*" + suffix):
        if old != dest:
            old.unlink()
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="build-kernels", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=MODULE_DIR,
        help="directory for the module (default: %(default)s)",
    )
    parser.add_argument(
        "--target-cpu",
        default="host",
        help="host (this CPU, default), generic (any CPU of the architecture) or an LLVM CPU name",
    )
    parser.add_argument("--verbose", action="store_true", help="show the compiler's steps")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = build(args.out, target_cpu=args.target_cpu, verbose=args.verbose)
    seconds = time.perf_counter() - start
    numba = _numba("numba")
    print(
        f"built {len(EXPORTS)} kernels into {path} ({path.stat().st_size / BYTES_PER_MB:.2f} MB, "
        f"target {args.target_cpu}, numba {numba.__version__}) in {seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
