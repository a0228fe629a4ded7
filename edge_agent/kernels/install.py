"""Install-time step of ``systemd/install.sh``: put a compiled kernel module into this venv.

Run with the agent's own venv (``python -m edge_agent.kernels.install``), which has no Numba:

* ``--build`` (the default delivery): installs Numba into a throw-away directory with pip
  (with this venv's NumPy version pinned, so the module is built against the NumPy it will
  run with), compiles the kernels for this CPU into the installed package with
  ``edge_agent.kernels.build``, and deletes the directory. Needs a C compiler and the Python
  headers at install time (``apt-get install gcc python3-dev``), and the package index.
* ``--module FILE``: copies a module built elsewhere by ``scripts/build-kernels`` (same
  architecture, same Python, same sources: the file name says all three) into the package.

Either way it then checks, in a fresh process, that the agent will load the module; a module
already matching the installed sources is kept (a re-run builds nothing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np

from edge_agent.fsutil import atomic_write
from edge_agent.kernels.dispatch import MODULE_DIR, module_filename
from edge_agent.kernels.sources import sources_digest

BUILD_REQUIREMENTS = ("numba>=0.60", "setuptools>=68")
EXECUTABLE_MODE = 0o755
CHECK_TIMEOUT_S = 120


class InstallError(RuntimeError):
    """A step the operator can fix (missing compiler, wrong module file)."""


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print("  +", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def build_here(target: Path) -> None:
    """Build into ``target`` with Numba from a throw-away directory."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        raise InstallError("no C compiler: apt-get install gcc (needed at install time only)")
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.is_file():
        raise InstallError(f"no {include}: apt-get install python3-dev (install time only)")
    with tempfile.TemporaryDirectory(prefix="edge-kernels-build-") as tmp:
        libs = Path(tmp) / "site"
        pins = [*BUILD_REQUIREMENTS, f"numpy=={np.__version__}"]
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              "--target", str(libs), *pins])  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(libs), "NUMBA_CACHE_DIR": str(Path(tmp) / "nbc")}
        _run([sys.executable, "-m", "edge_agent.kernels.build", "--out", str(target)], env=env)


def copy_module(module: Path, target: Path, expected: str) -> None:
    if module.name != expected:
        raise InstallError(
            f"{module} does not match this install: expected a module named {expected} (built "
            f"by scripts/build-kernels from these sources, for this Python and architecture)"
        )
    atomic_write(target / expected, module.read_bytes(), mode=EXECUTABLE_MODE)


def check_loads() -> str:
    """What a fresh agent process will run its kernels on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_KERNELS", "PYTHONP"))}
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.kernels"],
        env={**env, "EDGE_KERNELS": "aot"}, capture_output=True, text=True,
        timeout=CHECK_TIMEOUT_S, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise InstallError(f"the installed kernels do not load: {proc.stdout}{proc.stderr}")
    return proc.stdout.splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_agent.kernels.install")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--build", action="store_true", help="build here (the default)")
    how.add_argument("--module", type=Path, help="install a module built by build-kernels")
    args = parser.parse_args(argv)
    expected = module_filename(sources_digest())
    try:
        if args.module is not None:
            copy_module(args.module, MODULE_DIR, expected)
        elif (MODULE_DIR / expected).is_file():
            print(f"  = {expected} matches the installed sources; kept")
        else:
            build_here(MODULE_DIR)
        print(" ", check_loads())
    except (InstallError, subprocess.CalledProcessError) as exc:
        print(f"edge_agent.kernels.install: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
