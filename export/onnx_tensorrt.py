"""Jetson (ONNX -> TensorRT) variant of the window autoencoder.

Where it sits: the desktop trainer learns a float Keras autoencoder over sliding windows
(batch, W, C); `export` turns it into one artifact per kind of gateway. For a Jetson the
artifact is a float ONNX graph with a dynamic batch dimension. TensorRT engines are specific to
the GPU and TensorRT version they are built with, so the engine itself (`model.plan`) is built
on the Jetson with `trtexec`; this module writes `model.onnx`, proves on CPU with onnxruntime
that it computes what the Keras model computes, and returns the `trtexec` lines to run there.

Conversion uses tf2onnx on a `tf.function` wrapping the model, which works with Keras 3; if that
fails, it falls back to a SavedModel exported by Keras and the `tf2onnx.convert` command line.
docs/accelerators.md describes the device side.
"""

import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from export.inputs import check_windows, window_shape

ONNX_NAME = "model.onnx"
ENGINE_NAME = "model.plan"
INPUT_NAME = "windows"
OUTPUT_NAME = "reconstruction"
BATCH_DIM = "batch"
DEFAULT_OPSET = 17
# Float32 ONNX vs float32 Keras differ only by op ordering/fusion; anything above this means
# the graph was converted wrongly, not rounded differently.
PARITY_TOLERANCE = 1e-4
# Windows per inference call in the parity check; keeps memory flat for long samples.
PARITY_CHUNK = 256
# JetPack installs trtexec here and does not put it on PATH.
TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
# The gateway scores one window per hop, so TensorRT tunes its kernels for batch 1; the max
# covers scoring a backlog of buffered windows after a stall in one call.
MIN_BATCH = 1
OPT_BATCH = 1
MAX_BATCH = 64
# The SavedModel fallback starts a second Python that imports TensorFlow; minutes at most.
CLI_TIMEOUT_S = 600
INSTALL_HINT = (
    "install the desk extras: pip install 'edge-anomaly[train]' "
    "(tf2onnx>=1.16, onnx>=1.16, onnxruntime>=1.18, tensorflow<2.22)"
)


def trtexec_command(
    onnx_path: str | Path,
    window: int,
    channels: int,
    *,
    fp16: bool = True,
    input_name: str = INPUT_NAME,
    engine: str = ENGINE_NAME,
    max_batch: int = MAX_BATCH,
    calib: str | None = None,
) -> str:
    """The `trtexec` line that builds a TensorRT engine from `onnx_path` on a Jetson.

    `fp16=True` builds an FP16 engine; `fp16=False` builds INT8 with FP16 allowed for layers
    that have no INT8 kernel. Without `calib` (a TensorRT calibration cache) trtexec uses
    placeholder INT8 ranges, which is fine for timing but not for scoring.
    """
    if min(window, channels) < 1 or max_batch < MIN_BATCH:
        raise ExportError(
            f"window, channels and max_batch must be >= 1, got {window}, {channels}, {max_batch}"
        )
    opt_batch = min(OPT_BATCH, max_batch)

    def shape(batch: int) -> str:
        return f"{input_name}:{batch}x{window}x{channels}"

    parts = [
        TRTEXEC,
        f"--onnx={onnx_path}",
        f"--minShapes={shape(MIN_BATCH)}",
        f"--optShapes={shape(opt_batch)}",
        f"--maxShapes={shape(max_batch)}",
        f"--saveEngine={engine}",
    ]
    if fp16:
        parts.append("--fp16")
    else:
        parts += ["--int8", "--fp16"]
        if calib is not None:
            parts.append(f"--calib={calib}")
    return shlex.join(parts)


def build_onnx(
    model: Any,
    sample_windows: np.ndarray,
    out_dir: Path,
    *,
    opset: int = DEFAULT_OPSET,
) -> dict[str, Any]:
    """Write `out_dir/model.onnx` from the float Keras `model` and check it against Keras.

    `sample_windows` are float32 windows (n, W, C) used for the parity check. Raises ExportError
    for bad inputs, when no tf2onnx route converts the model, or when onnxruntime and Keras
    differ by PARITY_TOLERANCE or more.
    """
    window, channels = window_shape(model)
    windows = check_windows(sample_windows, window, channels, what="sample windows")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx, ort, tf, tf2onnx = _import_toolchain()
    notes: list[str] = []

    proto, route = _convert(model, window, channels, opset, notes)
    _name_io(proto, model)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ExportError(f"tf2onnx produced an invalid ONNX model: {exc}") from exc
    onnx_path = out_dir / ONNX_NAME
    onnx.save(proto, str(onnx_path))

    parity = _parity(model, onnx_path, windows)
    notes.append(
        "Build the engine on the Jetson itself: TensorRT plans only load on the GPU and "
        "TensorRT version that built them."
    )
    notes.append(
        "The INT8 line has no calibration cache, so its ranges are placeholders: use it to "
        "time the engine, and the FP16 line for scoring (see docs/accelerators.md)."
    )
    return {
        "onnx": ONNX_NAME,
        "opset": opset,
        "converter": {
            "route": route,
            "tf2onnx": tf2onnx.__version__,
            "tensorflow": tf.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
        "input": _value_info(proto.graph.input[0]),
        "output": _value_info(proto.graph.output[0]),
        "parity": parity,
        "engine": ENGINE_NAME,
        "trtexec": {
            "fp16": trtexec_command(ONNX_NAME, window, channels, fp16=True),
            "int8": trtexec_command(ONNX_NAME, window, channels, fp16=False),
        },
        "notes": notes,
    }


def _import_toolchain() -> tuple[Any, Any, Any, Any]:
    try:
        import onnx
        import onnxruntime as ort
        import tensorflow as tf
        import tf2onnx
    except Exception as exc:  # a broken protobuf pin fails with TypeError, not ImportError
        raise ExportError(f"ONNX toolchain not importable ({exc}); {INSTALL_HINT}") from exc
    return onnx, ort, tf, tf2onnx


def _convert(
    model: Any, window: int, channels: int, opset: int, notes: list[str]
) -> tuple[Any, str]:
    """Try each tf2onnx route in turn; return (ModelProto, route name)."""
    routes = [
        ("tf2onnx.convert.from_function", _via_function),
        ("keras SavedModel + python -m tf2onnx.convert", _via_saved_model),
    ]
    failures = []
    for name, route in routes:
        try:
            proto = route(model, window, channels, opset)
        except Exception as exc:
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if failures:
            notes.append("Earlier routes failed: " + " | ".join(failures))
        return proto, name
    import keras
    import tensorflow as tf
    import tf2onnx

    raise ExportError(
        f"tf2onnx {tf2onnx.__version__} could not convert this model with TensorFlow "
        f"{tf.__version__} / Keras {keras.__version__}. Tried:\n  "
        + "\n  ".join(failures)
        + f"\nUse a tf2onnx release that supports this TensorFlow, or pin TensorFlow to one "
        f"tf2onnx supports; {INSTALL_HINT}"
    )


def _signature(window: int, channels: int) -> Any:
    import tensorflow as tf

    # None batch: one ONNX file serves streaming (1) and backlog scoring (up to MAX_BATCH).
    return tf.TensorSpec((None, window, channels), tf.float32, name=INPUT_NAME)


def _via_function(model: Any, window: int, channels: int, opset: int) -> Any:
    # from_keras targets tf.keras 2; tracing a plain tf.function sidesteps Keras 3 internals.
    import tensorflow as tf
    import tf2onnx

    spec = _signature(window, channels)

    @tf.function(input_signature=[spec])
    def serve(windows: Any) -> dict[str, Any]:
        # A dict output gives the ONNX output a stable name instead of "Identity:0".
        return {OUTPUT_NAME: model(windows, training=False)}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=[spec], opset=opset)
    return proto


def _via_saved_model(model: Any, window: int, channels: int, opset: int) -> Any:
    import onnx

    with tempfile.TemporaryDirectory(prefix="onnx_export_") as tmp:
        saved = Path(tmp) / "saved_model"
        target = Path(tmp) / ONNX_NAME
        model.export(
            str(saved),
            format="tf_saved_model",
            input_signature=[_signature(window, channels)],
            verbose=False,
        )
        cmd = [
            sys.executable,
            "-m",
            "tf2onnx.convert",
            "--saved-model",
            str(saved),
            "--signature_def",
            "serve",
            "--opset",
            str(opset),
            "--output",
            str(target),
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
        )
        if proc.returncode != 0 or not target.exists():
            raise RuntimeError(f"exit {proc.returncode}: {proc.stderr[-1500:]}")
        return onnx.load(str(target))


def _name_io(proto: Any, model: Any) -> None:
    """Give the graph stable I/O names and a named `batch` dimension.

    trtexec addresses inputs by name in --minShapes, and the runtime looks the output up by
    name, so neither may depend on which conversion route ran. tf2onnx leaves anonymous
    `unk__N` dims (and loses W after Dense's reshape); the Keras shapes are known, so restore
    them.
    """
    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportError(
            f"expected one ONNX input and output, got {len(graph.input)} and {len(graph.output)}"
        )
    _rename_value(graph, graph.input[0].name, INPUT_NAME)
    _rename_value(graph, graph.output[0].name, OUTPUT_NAME)
    shapes = (tuple(model.inputs[0].shape), tuple(model.outputs[0].shape))
    for value, keras_shape in zip((graph.input[0], graph.output[0]), shapes, strict=True):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(keras_shape):
            continue
        for i, (dim, size) in enumerate(zip(dims, keras_shape, strict=True)):
            if i == 0:
                dim.dim_param = BATCH_DIM
            elif size is not None:
                dim.dim_value = int(size)


def _rename_value(graph: Any, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def _value_info(value: Any) -> dict[str, Any]:
    import onnx

    dims = [
        dim.dim_param if dim.HasField("dim_param") else int(dim.dim_value)
        for dim in value.type.tensor_type.shape.dim
    ]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    return {"name": value.name, "shape": dims, "dtype": str(dtype)}


def _parity(model: Any, onnx_path: Path, windows: np.ndarray) -> dict[str, Any]:
    """Compare onnxruntime (CPU) with Keras on `windows`; raise if they differ materially."""
    import onnxruntime as ort

    provider = "CPUExecutionProvider"
    try:
        session = ort.InferenceSession(str(onnx_path), providers=[provider])
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load {onnx_path}: {exc}") from exc
    max_diff = 0.0
    total = 0.0
    count = 0
    for start in range(0, len(windows), PARITY_CHUNK):
        chunk = windows[start : start + PARITY_CHUNK]
        got = session.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0]
        want = np.asarray(model(chunk, training=False), dtype=np.float32)
        if got.shape != want.shape:
            raise ExportError(f"ONNX output shape {got.shape} != Keras output shape {want.shape}")
        diff = np.abs(got.astype(np.float32) - want)
        max_diff = max(max_diff, float(diff.max()))
        total += float(diff.sum())
        count += diff.size
    # Batch 1 is the shape the Jetson streams with; make sure the dynamic batch really works.
    single = session.run([OUTPUT_NAME], {INPUT_NAME: windows[:1]})[0]
    want_single = np.asarray(model(windows[:1], training=False), dtype=np.float32)
    max_diff = max(max_diff, float(np.max(np.abs(single - want_single))))
    mean_diff = total / count
    if not max_diff < PARITY_TOLERANCE:
        raise ExportError(
            f"ONNX model disagrees with Keras: max |diff| = {max_diff:.3g} over "
            f"{len(windows)} windows (tolerance {PARITY_TOLERANCE:g}); the conversion is wrong"
        )
    return {
        "max_abs_diff": max_diff,
        "mean_abs_diff": mean_diff,
        "tolerance": PARITY_TOLERANCE,
        "windows": len(windows),
        "provider": provider,
    }
