"""Coral variant (export.edgetpu): int8, batch 1, only Edge TPU ops, compiler handled.

The real `edgetpu_compiler` only exists on Debian/Ubuntu x86-64 with the Coral repository, so
the compile step is exercised with a stand-in script that behaves like it on the command line.
"""

import stat
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_models import CHANNELS, WINDOW, fitted_tiny_models

N_WINDOWS = 64
SEED = 0


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    return np.random.default_rng(SEED).random((N_WINDOWS, WINDOW, CHANNELS), dtype=np.float32)


@pytest.fixture(scope="module")
def models(windows: np.ndarray) -> dict[str, Any]:
    return fitted_tiny_models(windows, SEED)


@pytest.fixture(scope="module")
def results(
    models: dict[str, Any], windows: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[dict[str, Any], Path]]:
    from export.edgetpu import build_edgetpu

    out: dict[str, tuple[dict[str, Any], Path]] = {}
    # An empty PATH stands for "no compiler installed", whatever this machine has.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", str(tmp_path_factory.mktemp("empty_path")))
        for name, model in models.items():
            out_dir = tmp_path_factory.mktemp(name)
            out[name] = (build_edgetpu(model, windows, out_dir), out_dir)
    return out


def _fake_compiler(path: Path, exit_code: int = 0) -> Path:
    """A script with edgetpu_compiler's CLI: `-s -o OUT_DIR MODEL` -> OUT_DIR/<stem>_edgetpu."""
    path.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            out="$3"; model="$4"
            echo "Edge TPU Compiler version fake"
            echo "Operator Count Status"
            if [ {exit_code} -ne 0 ]; then echo "Model not quantized" >&2; exit {exit_code}; fi
            stem=$(basename "$model" .tflite)
            cp "$model" "$out/${{stem}}_edgetpu.tflite"
            """
        )
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.parametrize("name", ["dilated_conv", "dense"])
def test_ready_model_is_int8_with_batch_one(
    results: dict[str, tuple[dict[str, Any], Path]], name: str
) -> None:
    from ai_edge_litert.interpreter import Interpreter

    result, out_dir = results[name]
    assert result["tflite"] == "model_edgetpu_ready.tflite"
    for side in ("input", "output"):
        assert result[side]["dtype"] == "int8"
        assert result[side]["shape"] == [1, WINDOW, CHANNELS]

    # Independent check on the written file with the runtime the gateways use.
    interpreter = Interpreter(model_path=str(out_dir / result["tflite"]))
    for detail in (interpreter.get_input_details()[0], interpreter.get_output_details()[0]):
        assert detail["dtype"] == np.int8
        assert tuple(detail["shape"]) == (1, WINDOW, CHANNELS)
        assert tuple(detail["shape_signature"]) == (1, WINDOW, CHANNELS)


@pytest.mark.parametrize("name", ["dilated_conv", "dense"])
def test_only_edgetpu_ops(results: dict[str, tuple[dict[str, Any], Path]], name: str) -> None:
    from export.edgetpu import EDGETPU_SUPPORTED_OPS

    result, _ = results[name]
    assert result["unsupported_ops"] == sorted(set(result["ops"]) - EDGETPU_SUPPORTED_OPS)
    assert "FULLY_CONNECTED" in result["ops"]
    if name == "dense":
        assert result["unsupported_ops"] == []
        assert result["constraint_issues"] == []
        return
    if "SPACE_TO_BATCH_ND" in result["ops"]:
        # Older lowerings of a dilated conv go through space-to-batch; that must be reported.
        assert "SPACE_TO_BATCH_ND" in result["unsupported_ops"]
        assert any("SPACE_TO_BATCH_ND" in note for note in result["notes"])
    else:
        assert result["unsupported_ops"] == []
    assert not any("dilation" in issue for issue in result["constraint_issues"])
    # Dense over (time, features) keeps a 2-D output, which the Edge TPU does not map.
    assert any(
        issue.startswith(f"FULLY_CONNECTED output [1, {WINDOW}, {CHANNELS}]")
        for issue in result["constraint_issues"]
    )


def test_dilated_conv_lowering_is_fixed_and_checked(
    results: dict[str, tuple[dict[str, Any], Path]],
) -> None:
    from tensorflow.lite.tools import flatbuffer_utils

    from export.edgetpu import inspect_tflite

    result, out_dir = results["dilated_conv"]
    if "CONV_2D" not in result["ops"]:
        pytest.skip("this TensorFlow does not lower Conv1D to CONV_2D")
    content = (out_dir / result["tflite"]).read_bytes()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    convs = [
        op
        for op in model.subgraphs[0].operators
        if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "CONV_2D"
    ]
    assert [(op.builtinOptions.dilationHFactor, op.builtinOptions.dilationWFactor) for op in convs]
    assert all(
        op.builtinOptions.dilationHFactor == op.builtinOptions.dilationWFactor == 2 for op in convs
    )
    assert any("dilation" in note for note in result["notes"])

    # Undo the fix: the checker must flag the 1x2 dilation the converter produced.
    for op in convs:
        op.builtinOptions.dilationHFactor = 1
    broken = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    issues = inspect_tflite(broken)["constraint_issues"]
    assert any("dilation 1x2" in issue for issue in issues)


@pytest.mark.parametrize("name", ["dilated_conv", "dense"])
def test_without_compiler_records_command(
    results: dict[str, tuple[dict[str, Any], Path]], name: str
) -> None:
    result, out_dir = results[name]
    assert result["compiled"] is False
    assert result["edgetpu_tflite"] is None
    assert result["compile_command"] == (
        f"edgetpu_compiler -s -o {out_dir} {out_dir / 'model_edgetpu_ready.tflite'}"
    )
    assert any("docs/accelerators.md" in note for note in result["notes"])
    assert result["int8_max_abs_error"] < 0.1  # inputs in [0, 1): a few int8 steps at most


def test_runs_compiler_and_records_output(
    models: dict[str, Any], windows: np.ndarray, tmp_path: Path
) -> None:
    from export.edgetpu import build_edgetpu

    compiler = _fake_compiler(tmp_path / "edgetpu_compiler")
    out_dir = tmp_path / "out"
    result = build_edgetpu(models["dense"], windows, out_dir, compiler=str(compiler))
    assert result["compiled"] is True
    assert result["edgetpu_tflite"] == "model_edgetpu_ready_edgetpu.tflite"
    assert (out_dir / result["edgetpu_tflite"]).is_file()
    log = (out_dir / result["compiler_log"]).read_text()
    assert "-s -o" in log
    assert "Edge TPU Compiler version fake" in log
    # The stand-in copies the model, so every op counts as left on the CPU.
    assert result["cpu_ops_after_compile"] == result["ops"]


def test_failing_compiler_raises(
    models: dict[str, Any], windows: np.ndarray, tmp_path: Path
) -> None:
    from export.edgetpu import build_edgetpu
    from export.errors import ExportError

    compiler = _fake_compiler(tmp_path / "edgetpu_compiler", exit_code=1)
    with pytest.raises(ExportError, match=r"failed \(exit 1\)[\s\S]*Model not quantized"):
        build_edgetpu(models["dense"], windows, tmp_path / "out", compiler=str(compiler))


def test_missing_compiler_raises(
    models: dict[str, Any], windows: np.ndarray, tmp_path: Path
) -> None:
    from export.edgetpu import build_edgetpu
    from export.errors import ExportError

    with pytest.raises(ExportError, match="not executable"):
        build_edgetpu(models["dense"], windows, tmp_path, compiler=str(tmp_path / "nope"))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((8, WINDOW + 1, CHANNELS), np.float32),
        np.zeros((WINDOW, CHANNELS), np.float32),
        np.zeros((0, WINDOW, CHANNELS), np.float32),
    ],
    ids=["wrong-window", "no-batch-axis", "empty"],
)
def test_bad_representative_shape(models: dict[str, Any], tmp_path: Path, bad: np.ndarray) -> None:
    from export.edgetpu import build_edgetpu
    from export.errors import ExportError

    with pytest.raises(ExportError, match=r"shape \(n, 16, 4\)"):
        build_edgetpu(models["dense"], bad, tmp_path)


def test_nan_representative(models: dict[str, Any], windows: np.ndarray, tmp_path: Path) -> None:
    from export.edgetpu import build_edgetpu
    from export.errors import ExportError

    bad = windows.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ExportError, match="finite"):
        build_edgetpu(models["dense"], bad, tmp_path)
