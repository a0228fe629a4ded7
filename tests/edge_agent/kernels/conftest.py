"""Fixtures for the kernel tests: the compiled module built once per session, and its
functions behind the same guards the device uses."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from built_once import built_once

from edge_agent.kernels.bind import register
from edge_agent.kernels.dispatch import EXPORTS, backend, module_filename, module_name
from edge_agent.kernels.signature import make_guard
from edge_agent.kernels.sources import KERNEL_SOURCES

ROOT = Path(__file__).resolve().parents[3]
BUILD_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def aot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the module built from this checkout (scripts/build-kernels)."""
    with built_once(tmp_path_factory, "aot") as (out, built):
        if not built:
            out.mkdir()
            proc = subprocess.run(
                ["bash", str(ROOT / "scripts" / "build-kernels"), "--out", str(out)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
                check=False,
                env={
                    **{k: v for k, v in os.environ.items() if not k.startswith("EDGE_KERNELS")},
                    "PYTHON": sys.executable,
                },
            )
            assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / module_filename(backend().digest)).is_file(), sorted(out.iterdir())
    return out


@pytest.fixture(scope="session")
def aot(aot_dir: Path) -> dict[str, Callable[..., Any]]:
    """Every exported kernel from the compiled module, guarded as on the device."""
    assert backend().kind == "jit", "the test process itself runs the JIT"
    for rel in KERNEL_SOURCES:  # every kernel module, so that EXPORTS lists them all
        importlib.import_module("edge_agent." + rel.removesuffix(".py").replace("/", "."))
    digest = backend().digest
    path = aot_dir / module_filename(digest)
    name = module_name(digest)
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    guarded = {}
    for n, e in EXPORTS.items():
        target = getattr(module, n)
        guarded[n] = make_guard(n, e.signature, target)
        register(guarded[n], n, e.signature, target)  # bind() sees through them, as on a gateway
    return guarded


@pytest.fixture(scope="session")
def no_numba(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PYTHONPATH entry under which ``import numba`` and ``import llvmlite`` fail."""
    d = tmp_path_factory.mktemp("no-numba")
    for name in ("numba", "llvmlite"):
        (d / f"{name}.py").write_text(f"raise ImportError('{name} is absent, as on a gateway')\n")
    return d
