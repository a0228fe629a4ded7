"""Coral (Edge TPU) variant of the window autoencoder.

Where it sits: the desktop trainer learns a float Keras autoencoder over sliding windows
(batch, W, C); `export` turns it into one artifact per kind of gateway. This module builds the
Coral one:

1. convert the model to a full-integer int8 TFLite file with a fixed batch of 1, because the
   Edge TPU compiler only accepts static shapes and 8-bit tensors;
2. list the ops in that file and compare them with the ops the Edge TPU can execute;
3. where `edgetpu_compiler` is installed (it exists only for Debian/Ubuntu x86-64), compile it
   to `*_edgetpu.tflite`; elsewhere, record the command to run on such a machine.

The compiler maps the graph onto the TPU up to the first op it cannot run and leaves the rest
on the gateway CPU, so an unsupported op is reported rather than treated as an error: the model
still works, only slower. On the gateway the compiled file is loaded through the
`libedgetpu.so.1` delegate; docs/accelerators.md has the steps.
"""

import shlex
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from export.inputs import check_windows, window_shape

READY_NAME = "model_edgetpu_ready.tflite"
# The compiler names its output after its input: <stem>_edgetpu.tflite and <stem>_edgetpu.log.
COMPILED_NAME = "model_edgetpu_ready_edgetpu.tflite"
COMPILER_LOG_NAME = "edgetpu_compiler.log"
DEFAULT_COMPILER = "edgetpu_compiler"
INPUT_NAME = "windows"

# The Edge TPU runs one window at a time: its compiler rejects dynamic dimensions.
EDGETPU_BATCH = 1
# Calibration only has to see the activation ranges; beyond a few hundred windows the ranges
# stop moving while conversion time keeps growing linearly.
MAX_CALIBRATION_WINDOWS = 500
# Windows pushed through the CPU interpreter to check a rewritten model and to measure the
# int8 error; enough to exercise every op, cheap enough for CI.
CHECK_WINDOWS = 16
# Compiling a small autoencoder takes seconds; this only stops a hung compiler.
COMPILER_TIMEOUT_S = 600
# Edge TPU tensors may have more than 3 dimensions only if the outer ones have size 1.
EDGETPU_MAX_RANK = 3
INT8_MIN, INT8_MAX = -128, 127

# TFLite builtin op names that the Edge TPU can execute (Coral documentation, "TensorFlow models
# on the Edge TPU", supported operations). Some carry extra conditions (e.g. Conv2d needs the
# same dilation in x and y) which `inspect_tflite` checks where they matter for our models.
# DEQUANTIZE is deliberately absent: it is not on the list and runs on the CPU.
EDGETPU_SUPPORTED_OPS = frozenset(
    {
        "ADD",
        "AVERAGE_POOL_2D",
        "CONCATENATION",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "EXPAND_DIMS",
        "FULLY_CONNECTED",
        "L2_NORMALIZATION",
        "LOGISTIC",
        "MAXIMUM",
        "MAX_POOL_2D",
        "MEAN",
        "MINIMUM",
        "MUL",
        "PACK",
        "PAD",
        "PRELU",
        "QUANTIZE",
        "REDUCE_MAX",
        "REDUCE_MIN",
        "RELU",
        "RELU6",
        "RELU_N1_TO_1",
        "RESHAPE",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "RSQRT",
        "SLICE",
        "SOFTMAX",
        "SPACE_TO_DEPTH",
        "SPLIT",
        "SQUARED_DIFFERENCE",
        "SQUEEZE",
        "STRIDED_SLICE",
        "SUB",
        "SUM",
        "TANH",
        "TRANSPOSE",
        "TRANSPOSE_CONV",
        # Coral lists "LSTM (unidirectional only)"; the converter emits it under this name.
        "UNIDIRECTIONAL_SEQUENCE_LSTM",
    }
)

# What to change in the Keras model when one of the usual suspects shows up.
UNSUPPORTED_OP_HINTS = {
    "SPACE_TO_BATCH_ND": "a dilated convolution was lowered through space-to-batch; "
    "use an undilated Conv1D or a larger kernel",
    "BATCH_TO_SPACE_ND": "a dilated convolution was lowered through space-to-batch; "
    "use an undilated Conv1D or a larger kernel",
    "DEQUANTIZE": "a float tensor remains in the graph; every op must have an int8 kernel",
    "LEAKY_RELU": "use ReLU (or PReLU)",
    "GELU": "use ReLU",
    "HARD_SWISH": "use ReLU6",
    "GATHER": "avoid indexing/embedding layers inside the model",
    "CAST": "keep every tensor numeric int8; do casts outside the model",
}

_CONV_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D"})


def edgetpu_compile_command(
    tflite_path: Path, out_dir: Path, compiler: str = DEFAULT_COMPILER
) -> str:
    """The shell command that compiles `tflite_path` for the Edge TPU into `out_dir`.

    `-s` prints which ops were mapped to the TPU, which is the part of the log worth keeping.
    """
    return shlex.join([compiler, "-s", "-o", str(out_dir), str(tflite_path)])


def build_edgetpu(
    model: Any,
    representative: np.ndarray,
    out_dir: Path,
    *,
    compiler: str | None = None,
) -> dict[str, Any]:
    """Write an Edge-TPU-ready int8 TFLite model to `out_dir` and compile it if possible.

    `representative` holds float32 windows (n, W, C) from the training distribution; they set
    the int8 ranges. `compiler` is the name or path of `edgetpu_compiler`; when it is None the
    compiler is looked up on PATH and, if absent, the result says `compiled: False` together
    with the command to run elsewhere. Raises ExportError for bad inputs, a model that cannot
    be made full-integer, or a compiler that fails.
    """
    window, channels = window_shape(model)
    windows = check_windows(representative, window, channels, what="representative windows")
    # Resolved before converting so a mistyped compiler path fails in seconds, not minutes.
    compiler_path = _resolve_compiler(compiler)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    content = _convert_static_int8(model, windows, window, channels)
    content = _equalize_conv_dilations(content, windows[:CHECK_WINDOWS], notes)
    info = inspect_tflite(content)
    _require_edgetpu_io(info, window, channels)

    ready_path = out_dir / READY_NAME
    ready_path.write_bytes(content)

    unsupported = sorted(set(info["ops"]) - EDGETPU_SUPPORTED_OPS)
    for op in unsupported:
        hint = UNSUPPORTED_OP_HINTS.get(op, "not on the Edge TPU op list")
        notes.append(f"{op} will run on the CPU, and so will every op after it: {hint}.")

    if info["constraint_issues"]:
        notes.append(
            f"{len(info['constraint_issues'])} Edge TPU constraint issue(s) may keep ops on the "
            "CPU; see constraint_issues."
        )

    int8_error = _int8_error(model, content, windows[:CHECK_WINDOWS])

    command = edgetpu_compile_command(ready_path, out_dir, compiler or DEFAULT_COMPILER)
    result: dict[str, Any] = {
        "tflite": READY_NAME,
        "edgetpu_tflite": None,
        "compiler_log": None,
        "compiled": False,
        "compile_command": command,
        "ops": info["ops"],
        "op_counts": info["op_counts"],
        "op_versions": info["op_versions"],
        "unsupported_ops": unsupported,
        "constraint_issues": info["constraint_issues"],
        "cpu_ops_after_compile": None,
        "input": info["input"],
        "output": info["output"],
        "int8_max_abs_error": int8_error,
        "notes": notes,
    }
    if compiler_path is None:
        notes.append(
            f"{DEFAULT_COMPILER} is not installed here (it ships only for Debian/Ubuntu x86-64 "
            f"from the Coral apt repository); run `{command}` on such a machine, "
            "see docs/accelerators.md."
        )
        return result

    compiled_path, log_path = _run_compiler(compiler_path, ready_path, out_dir)
    compiled_info = inspect_tflite(compiled_path.read_bytes())
    # After compilation the TPU part is a single custom op; whatever else remains runs on the CPU.
    cpu_ops = [op for op in compiled_info["ops"] if op != "CUSTOM(edgetpu-custom-op)"]
    if cpu_ops:
        notes.append(f"Ops left on the CPU after compilation: {', '.join(cpu_ops)}.")
    result.update(
        edgetpu_tflite=compiled_path.name,
        compiler_log=log_path.name,
        compiled=True,
        cpu_ops_after_compile=cpu_ops,
    )
    return result


def inspect_tflite(model_content: bytes) -> dict[str, Any]:
    """Read a TFLite flatbuffer: ops in graph order, op counts, I/O tensors, Edge TPU issues.

    Parses the flatbuffer directly (TensorFlow's `flatbuffer_utils`) rather than the text of
    `tf.lite.experimental.Analyzer`, whose format is meant for people and changes between
    releases.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_content))
    if not model.subgraphs:
        raise ExportError("TFLite model has no subgraph")
    ops: list[str] = []
    issues: list[str] = []
    # The compiler is older than the converter and refuses op versions it does not know, so
    # the versions are reported alongside the names.
    code_versions = [code.version for code in model.operatorCodes]
    versions: dict[str, int] = {}
    if len(model.subgraphs) > 1:
        # The compiler maps only the main graph; control flow lives in extra subgraphs.
        issues.append(f"{len(model.subgraphs)} subgraphs; the Edge TPU compiles only one")
    for graph in model.subgraphs:
        for op in graph.operators or []:
            name = _op_name(model, op.opcodeIndex)
            ops.append(name)
            versions[name] = max(versions.get(name, 0), int(code_versions[op.opcodeIndex]))
            if name in _CONV_OPS:
                issues.extend(_dilation_issue(graph, op, name))
            elif name == "FULLY_CONNECTED":
                issues.extend(_fully_connected_issue(graph, op))
        issues.extend(_tensor_issues(model, graph))
    main = model.subgraphs[0]
    return {
        "ops": list(dict.fromkeys(ops)),
        "op_counts": dict(Counter(ops)),
        "op_versions": versions,
        "constraint_issues": issues,
        "input": _tensor_info(main, main.inputs[0]),
        "output": _tensor_info(main, main.outputs[0]),
    }


def _calibration_subset(windows: np.ndarray) -> np.ndarray:
    if len(windows) <= MAX_CALIBRATION_WINDOWS:
        return windows
    # Evenly spaced rather than the first N, so a long recording is sampled end to end.
    idx = np.linspace(0, len(windows) - 1, MAX_CALIBRATION_WINDOWS).astype(np.int64)
    return windows[idx]


def _convert_static_int8(model: Any, windows: np.ndarray, window: int, channels: int) -> bytes:
    """Full-integer int8 conversion of `model` with the batch pinned to EDGETPU_BATCH."""
    import keras
    import tensorflow as tf

    # Re-wrapping the model on a fixed-batch Input is what pins the shape: a tf.function with a
    # (1, W, C) signature fails in TF 2.21 because Keras 3 variables are not frozen that way.
    fixed_in = keras.Input(
        batch_shape=(EDGETPU_BATCH, window, channels), dtype="float32", name=INPUT_NAME
    )
    fixed_out = model(fixed_in)
    if isinstance(fixed_out, dict | list | tuple):
        raise ExportError("model must have a single (batch, W, C) output")
    fixed = keras.Model(fixed_in, fixed_out)

    calibration = _calibration_subset(windows)

    def representative_dataset() -> Any:
        for w in calibration:
            yield [w[np.newaxis]]

    converter = tf.lite.TFLiteConverter.from_keras_model(fixed)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    # INT8-only builtins make the converter fail loudly instead of leaving float ops behind.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    try:
        return bytes(converter.convert())
    except Exception as exc:
        raise ExportError(
            f"full-integer int8 conversion failed ({type(exc).__name__}: {exc}); the Edge TPU "
            "needs every op to have an int8 TFLite kernel"
        ) from exc


def _op_name(model: Any, opcode_index: int) -> str:
    from tensorflow.lite.tools import flatbuffer_utils

    name = flatbuffer_utils.opcode_to_name(model, opcode_index) or f"OP_{opcode_index}"
    if name == "CUSTOM":
        code = model.operatorCodes[opcode_index].customCode
        custom = code.decode() if isinstance(code, bytes) else str(code)
        return f"CUSTOM({custom})"
    return name


def _filter_hw(graph: Any, op: Any) -> tuple[int, int]:
    # CONV_2D filters are [out, h, w, in] and DEPTHWISE_CONV_2D ones [1, h, w, out].
    shape = graph.tensors[op.inputs[1]].shape
    return int(shape[1]), int(shape[2])


def _dilation_issue(graph: Any, op: Any, name: str) -> list[str]:
    opts = op.builtinOptions
    if opts is None or opts.dilationHFactor == opts.dilationWFactor:
        return []
    return [
        f"{name} has dilation {opts.dilationHFactor}x{opts.dilationWFactor} (h x w); the Edge "
        "TPU needs the same dilation in both directions"
    ]


def _fully_connected_issue(graph: Any, op: Any) -> list[str]:
    shape = [int(d) for d in graph.tensors[op.outputs[0]].shape]
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    if rows <= 1:
        return []
    # Dense applied per time step keeps the time axis (keep_num_dims); the Edge TPU maps only
    # fully-connected layers with a one-dimensional output.
    return [
        f"FULLY_CONNECTED output {shape} is not one-dimensional, so the Edge TPU compiler will "
        "likely leave it on the CPU; a Conv1D with kernel_size=1 does the same per-step "
        "projection and maps to CONV_2D"
    ]


def _tensor_issues(model: Any, graph: Any) -> list[str]:
    from tensorflow.lite.tools import flatbuffer_utils

    issues = []
    for tensor in graph.tensors or []:
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        signature = tensor.shapeSignature
        if signature is not None and any(int(d) < 0 for d in signature):
            issues.append(f"tensor {name} has a dynamic shape {list(signature)}")
        shape = [int(d) for d in (tensor.shape if tensor.shape is not None else [])]
        # The rank limit is about activations; conv filters are always 4-D and are fine.
        buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
        is_constant = buffer is not None and buffer.data is not None and len(buffer.data) > 0
        if (
            not is_constant
            and len(shape) > EDGETPU_MAX_RANK
            and any(d > 1 for d in shape[:-EDGETPU_MAX_RANK])
        ):
            issues.append(
                f"tensor {name} has shape {shape}; only the {EDGETPU_MAX_RANK} innermost "
                "dimensions may exceed 1 on the Edge TPU"
            )
        if flatbuffer_utils.type_to_name(tensor.type) == "FLOAT32":
            issues.append(f"tensor {name} is float32; the model is not fully integer")
    return issues


def _tensor_info(graph: Any, index: int) -> dict[str, Any]:
    from tensorflow.lite.tools import flatbuffer_utils

    tensor = graph.tensors[index]
    quant = tensor.quantization
    scales = [] if quant is None or quant.scale is None else list(quant.scale)
    zeros = [] if quant is None or quant.zeroPoint is None else list(quant.zeroPoint)
    return {
        "name": tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name),
        "shape": [int(d) for d in (tensor.shape if tensor.shape is not None else [])],
        "dtype": str(flatbuffer_utils.type_to_name(tensor.type)).lower(),
        # Per-tensor quantization on I/O: one scale and zero point, or none if not quantized.
        "scale": float(scales[0]) if scales else None,
        "zero_point": int(zeros[0]) if zeros else None,
    }


def _require_edgetpu_io(info: dict[str, Any], window: int, channels: int) -> None:
    expected = [EDGETPU_BATCH, window, channels]
    for side in ("input", "output"):
        tensor = info[side]
        if tensor["dtype"] != "int8" or tensor["shape"] != expected:
            raise ExportError(
                f"converted model {side} is {tensor['dtype']} {tensor['shape']}, expected int8 "
                f"{expected}; the converter did not honour the full-integer settings"
            )


def _equalize_conv_dilations(content: bytes, windows: np.ndarray, notes: list[str]) -> bytes:
    """Make h/w dilations equal where one of them cannot matter, keeping outputs bit-exact.

    Keras lowers Conv1D to CONV_2D over a height-1 image, so `dilation_rate=2` becomes dilation
    1x2 with a 1xk filter. The Edge TPU wants equal dilations, and with a filter of height 1
    the height dilation has no effect, so setting it to 2 as well changes nothing numerically.
    The rewritten model is run against the original on CPU and kept only if bit-identical.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    changed = 0
    for graph in model.subgraphs:
        for op in graph.operators or []:
            if _op_name(model, op.opcodeIndex) not in _CONV_OPS or op.builtinOptions is None:
                continue
            opts = op.builtinOptions
            if opts.dilationHFactor == opts.dilationWFactor:
                continue
            kh, kw = _filter_hw(graph, op)
            if kh == 1:
                opts.dilationHFactor = opts.dilationWFactor
            elif kw == 1:
                opts.dilationWFactor = opts.dilationHFactor
            else:
                continue  # both matter: left for inspect_tflite to report
            changed += 1
    if not changed:
        return content
    patched = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    if not np.array_equal(_run_int8(content, windows), _run_int8(patched, windows)):
        notes.append("Equalizing conv dilations changed the outputs; kept the original model.")
        return content
    notes.append(
        f"Set equal h/w dilation on {changed} conv op(s) whose filter is one pixel high "
        "(Conv1D lowering); outputs verified bit-identical on CPU."
    )
    return patched


def _interpreter(content: bytes) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter as interpreter_cls
    except ImportError:  # older desks: the interpreter bundled with TensorFlow
        import tensorflow as tf

        interpreter_cls = tf.lite.Interpreter
    interpreter = interpreter_cls(model_content=content)
    interpreter.allocate_tensors()
    return interpreter


def _run_int8(content: bytes, windows: np.ndarray) -> np.ndarray:
    """Quantize float windows, run them one by one, return the raw int8 outputs."""
    interpreter = _interpreter(content)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    results = []
    for w in windows:
        q = np.clip(np.round(w / scale + zero), INT8_MIN, INT8_MAX).astype(np.int8)
        interpreter.set_tensor(inp["index"], q[np.newaxis])
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.stack(results)


def _int8_error(model: Any, content: bytes, windows: np.ndarray) -> float:
    """Largest |int8 model - float model| on a few windows, in the model's output units."""
    interpreter = _interpreter(content)
    scale, zero = interpreter.get_output_details()[0]["quantization"]
    quantized = (_run_int8(content, windows).astype(np.float32) - zero) * scale
    reference = np.asarray(model(windows, training=False), dtype=np.float32)
    return float(np.max(np.abs(quantized - reference)))


def _resolve_compiler(compiler: str | None) -> str | None:
    if compiler is None:
        return shutil.which(DEFAULT_COMPILER)
    found = shutil.which(compiler)
    if found is None:
        raise ExportError(f"Edge TPU compiler {compiler!r} was requested but is not executable")
    return found


def _run_compiler(compiler: str, ready_path: Path, out_dir: Path) -> tuple[Path, Path]:
    cmd = [compiler, "-s", "-o", str(out_dir), str(ready_path)]
    log_path = out_dir / COMPILER_LOG_NAME
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=COMPILER_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExportError(f"could not run {shlex.join(cmd)}: {exc}") from exc
    log = f"$ {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}"
    log_path.write_text(log)
    compiled = out_dir / COMPILED_NAME
    if proc.returncode != 0 or not compiled.exists():
        raise ExportError(
            f"{DEFAULT_COMPILER} failed (exit {proc.returncode}); log in {log_path}:\n"
            + log[-2000:]
        )
    return compiled, log_path
