"""Jetson variant (export.onnx_tensorrt): ONNX file, Keras parity, trtexec command lines.

TensorRT itself only runs on the Jetson; here the ONNX graph is checked with onnxruntime on
CPU, which is the same graph TensorRT parses.
"""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_models import CHANNELS, WINDOW, fitted_tiny_models

N_WINDOWS = 64
SEED = 1
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    return np.random.default_rng(SEED).random((N_WINDOWS, WINDOW, CHANNELS), dtype=np.float32)


@pytest.fixture(scope="module")
def models(windows: np.ndarray) -> dict[str, Any]:
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    return fitted_tiny_models(windows, SEED)


@pytest.fixture(scope="module")
def results(
    models: dict[str, Any], windows: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[dict[str, Any], Path]]:
    from export.onnx_tensorrt import build_onnx

    out = {}
    for name, model in models.items():
        out_dir = tmp_path_factory.mktemp(name)
        out[name] = (build_onnx(model, windows, out_dir), out_dir)
    return out


@pytest.mark.parametrize("name", ["dilated_conv", "dense"])
def test_onnx_matches_keras(
    models: dict[str, Any],
    windows: np.ndarray,
    results: dict[str, tuple[dict[str, Any], Path]],
    name: str,
) -> None:
    import onnx
    import onnxruntime as ort

    result, out_dir = results[name]
    path = out_dir / result["onnx"]
    onnx.checker.check_model(onnx.load(str(path)))
    assert result["opset"] == 17
    assert result["input"] == {
        "name": "windows",
        "shape": ["batch", WINDOW, CHANNELS],
        "dtype": "float32",
    }
    assert result["output"]["name"] == "reconstruction"
    assert result["output"]["shape"] == ["batch", WINDOW, CHANNELS]

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = np.asarray(models[name](windows, training=False))
    got = session.run(["reconstruction"], {"windows": windows})[0]
    assert np.max(np.abs(got - want)) < TOLERANCE
    # Dynamic batch: the streaming shape and an odd backlog size both run.
    for batch in (1, 5):
        part = session.run(["reconstruction"], {"windows": windows[:batch]})[0]
        np.testing.assert_allclose(part, want[:batch], atol=TOLERANCE, rtol=0)

    parity = result["parity"]
    assert parity["max_abs_diff"] < TOLERANCE
    assert parity["windows"] == N_WINDOWS
    assert parity["provider"] == "CPUExecutionProvider"


def test_result_names_converter_and_engine(
    results: dict[str, tuple[dict[str, Any], Path]],
) -> None:
    result, _ = results["dense"]
    assert result["converter"]["route"] == "tf2onnx.convert.from_function"
    assert result["engine"] == "model.plan"
    shapes = "--minShapes=windows:1x16x4 --optShapes=windows:1x16x4 --maxShapes=windows:64x16x4"
    assert shapes in result["trtexec"]["fp16"]
    assert shapes in result["trtexec"]["int8"]
    assert "--onnx=model.onnx" in result["trtexec"]["fp16"]


def test_trtexec_command_variants() -> None:
    from export.onnx_tensorrt import trtexec_command

    fp16 = trtexec_command("model.onnx", 32, 6)
    for part in (
        "--onnx=model.onnx",
        "--minShapes=windows:1x32x6",
        "--optShapes=windows:1x32x6",
        "--maxShapes=windows:64x32x6",
        "--saveEngine=model.plan",
        "--fp16",
    ):
        assert part in fp16.split()
    assert "--int8" not in fp16

    int8 = trtexec_command(Path("out dir/model.onnx"), 32, 6, fp16=False, calib="calib.cache")
    assert "--int8" in int8.split()
    assert "--calib=calib.cache" in int8.split()
    assert "'--onnx=out dir/model.onnx'" in int8  # paths with spaces stay one argument

    assert "--maxShapes=windows:8x32x6" in trtexec_command("m.onnx", 32, 6, max_batch=8)


def test_trtexec_command_rejects_bad_shape() -> None:
    from export.errors import ExportError
    from export.onnx_tensorrt import trtexec_command

    with pytest.raises(ExportError, match=">= 1"):
        trtexec_command("model.onnx", 0, 4)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((8, WINDOW, CHANNELS + 1), np.float32),
        np.zeros((WINDOW, CHANNELS), np.float32),
    ],
    ids=["wrong-channels", "no-batch-axis"],
)
def test_bad_sample_shape(models: dict[str, Any], tmp_path: Path, bad: np.ndarray) -> None:
    from export.errors import ExportError
    from export.onnx_tensorrt import build_onnx

    with pytest.raises(ExportError, match=r"sample windows must have shape \(n, 16, 4\)"):
        build_onnx(models["dense"], bad, tmp_path)
    assert not (tmp_path / "model.onnx").exists()


def test_parity_failure_raises(
    models: dict[str, Any], windows: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from export import onnx_tensorrt
    from export.errors import ExportError

    # No float difference passes a zero tolerance, so the check has to fire.
    monkeypatch.setattr(onnx_tensorrt, "PARITY_TOLERANCE", 0.0)
    with pytest.raises(ExportError, match="disagrees with Keras"):
        onnx_tensorrt.build_onnx(models["dense"], windows, tmp_path)


def test_falls_back_to_next_route(
    models: dict[str, Any], windows: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from export import onnx_tensorrt

    def broken(*_: Any) -> Any:
        raise TypeError("from_function exploded")

    # The real fallback starts a second Python with TensorFlow (~20 s); stand in for it with
    # the in-process route so only the selection logic is timed here.
    monkeypatch.setattr(onnx_tensorrt, "_via_saved_model", onnx_tensorrt._via_function)
    monkeypatch.setattr(onnx_tensorrt, "_via_function", broken)
    result = onnx_tensorrt.build_onnx(models["dense"], windows, tmp_path)
    assert result["converter"]["route"].startswith("keras SavedModel")
    assert any("from_function exploded" in note for note in result["notes"])
    assert result["parity"]["max_abs_diff"] < TOLERANCE


def test_no_working_route_raises(
    models: dict[str, Any], windows: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from export import onnx_tensorrt
    from export.errors import ExportError

    def broken(*_: Any) -> Any:
        raise AttributeError("no attribute '_get_save_spec'")

    monkeypatch.setattr(onnx_tensorrt, "_via_function", broken)
    monkeypatch.setattr(onnx_tensorrt, "_via_saved_model", broken)
    with pytest.raises(ExportError, match=r"could not convert[\s\S]*_get_save_spec[\s\S]*pip"):
        onnx_tensorrt.build_onnx(models["dense"], windows, tmp_path)
