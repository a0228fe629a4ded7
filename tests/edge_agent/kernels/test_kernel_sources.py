"""Signature notation, the sources' digest and the desk's JIT cache stamp."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest

from edge_agent.data import grid
from edge_agent.kernels.dispatch import EXPORTS, backend, module_name
from edge_agent.kernels.signature import parse_signature
from edge_agent.kernels.sources import (
    DIGEST_FILES,
    KERNEL_SOURCES,
    PACKAGE_DIR,
    sources_digest,
)
from edge_agent.pipeline import _front


def test_signature_round_trip() -> None:
    text = "f4[:,:], i8[:]!, f8, b1 -> (f8[:], b1)"
    sig = parse_signature(text)
    assert sig.text() == text
    assert [a.ndim for a in sig.args] == [2, 1, 0, 0]
    assert sig.args[1].writes
    assert parse_signature("i1[:,:,:], f8 -> none").result == ()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("f8[:] f8", "expected 'ARGS -> RESULT'"),
        ("u2[:] -> none", "unknown dtype code 'u2'"),
        ("f8! -> none", "only an array can be written"),
        ("f4 -> none", "scalar 'f4' not supported"),
        ("f8[::1] -> none", "must read"),
        ("f8[:] -> f8[:]!", "cannot be marked"),
    ],
)
def test_signature_errors_name_the_problem(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as err:
        parse_signature(text, where="k.py: kern")
    assert "k.py: kern" in str(err.value)


def test_every_export_is_in_a_listed_source() -> None:
    for rel in KERNEL_SOURCES:
        importlib.import_module("edge_agent." + rel.removesuffix(".py").replace("/", "."))
    assert len(EXPORTS) == 8
    for entry in EXPORTS.values():
        path = Path(entry.py_func.__code__.co_filename).resolve().relative_to(PACKAGE_DIR)
        assert path.as_posix() in KERNEL_SOURCES


def test_an_edit_in_any_kernel_file_changes_the_module_name(tmp_path: Path) -> None:
    for rel in DIGEST_FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PACKAGE_DIR / rel, tmp_path / rel)
    same = sources_digest(tmp_path)
    assert same == backend().digest
    edited = tmp_path / "detect" / "windows.py"
    edited.write_text(edited.read_text() + "\n# an edit\n")
    assert module_name(sources_digest(tmp_path)) != module_name(same)


def test_a_change_in_how_arrays_are_returned_changes_the_module_name(tmp_path: Path) -> None:
    """The boxing hook (kernels/boxing.py) is compiled into the module: a gateway that
    already has a module must rebuild when it changes, although no kernel source did."""
    for rel in DIGEST_FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PACKAGE_DIR / rel, tmp_path / rel)
    same = sources_digest(tmp_path)
    boxing = tmp_path / "kernels" / "boxing.py"
    boxing.write_text(boxing.read_text() + "\n# an edit\n")
    assert sources_digest(tmp_path) != same


def test_jit_cache_is_stamped_with_every_kernel_file() -> None:
    """A fused kernel's cache goes stale when a kernel it inlines, in another file, changes."""
    front = _front._cache._impl._locator  # type: ignore[attr-defined]
    aligner = grid.align_push._cache._impl._locator  # type: ignore[attr-defined]
    stamp = f"edge-kernels-{backend().digest}"
    assert front.get_source_stamp() == stamp
    assert aligner.get_source_stamp() == stamp
