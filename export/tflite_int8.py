"""Full-integer int8 TFLite conversion of a trained window autoencoder.

Pipeline position: desk side, between ``trainer`` (which fits a Keras 3 model from
``trainer.models``) and ``edge_agent`` (which runs the result with
``edge_agent.detect.autoencoder.Int8Autoencoder``). Every gateway runs this file, so
the conversion is strict: int8 weights *and* activations, int8 input and output
tensors, ``TFLITE_BUILTINS_INT8`` only, and a post-check that no float32 tensor is
left in the graph.

How the model reaches the converter, and why: with TensorFlow 2.21 and Keras 3,
``TFLiteConverter.from_concrete_functions`` given a ``tf.function`` of the model plus
the model as ``trackable_obj`` keeps the Keras weights as resource variables, and the
resulting READ_VARIABLE ops crash int8 calibration ("read_variable.cc ... variable !=
nullptr"). So the weights are folded into constants first
(``convert_variables_to_constants_v2``) and the frozen function is converted without
a ``trackable_obj``; TensorFlow logs that this is its "deprecated conversion path",
but it is the one that works, in memory and 3-4x faster than the alternative. Where
that TensorFlow-internal helper is missing we fall back to
``model.export(format="tf_saved_model")`` + ``TFLiteConverter.from_saved_model``,
which also works (but skips the loop pre-check below). Both are deterministic: same
model and windows give the same bytes.

The traced signature has a dynamic batch, ``(None, W, C)``, so the TFLite input's
``shape_signature`` is ``[-1, W, C]``: the model allocates at batch 1 and the gateway
resizes it with ``resize_tensor_input`` to any batch (dynamic-batch reshapes become
SHAPE/STRIDED_SLICE/PACK ops on int32 shape tensors, which is fine). Only the Edge
TPU needs a static batch; that is ``export.edgetpu``'s job, not this module's.

All four model kinds (dense, conv, lstm, cnn_lstm_attn) pass. The LSTMs work because their
layers are built with ``unroll=True``: the converter then sees plain FULLY_CONNECTED /
LOGISTIC / TANH / MUL / ADD ops instead of a WHILE loop.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from export.errors import ExportError
from export.inputs import check_windows, window_shape

DEFAULT_MAX_SAMPLES = 500
# Calibration records each tensor's min/max over all windows, so feeding them in chunks
# gives the same ranges as one at a time (up to float rounding in batched matmuls: a
# scale may differ in its last bit) with far fewer invocations. Fixed, so the output
# bytes are reproducible.
CALIBRATION_CHUNK = 32
INPUT_NAME = "windows"
# Longest slice of a converter message kept in an ExportError: MLIR errors carry long
# call-site traces that help nobody reading a CLI error.
MAX_MESSAGE_CHARS = 600

# TFLite schema TensorType codes for FLOAT32, FLOAT16 and FLOAT64 (schema.fbs).
_FLOAT_TENSOR_TYPES = frozenset({0, 1, 10})

# TensorFlow loop ops that would become a TFLite WHILE (e.g. a non-unrolled RNN). The
# frozen graph uses TF1 control flow, where every loop has a LoopCond.
_LOOP_OPS = frozenset({"While", "StatelessWhile", "LoopCond"})
_MLIR_ERROR = re.compile(r"error: (.+)")
# Patterns that name the offending op in converter / calibrator errors, most specific first.
_OP_PATTERNS = (
    re.compile(r"'(?:tf|tfl)\.(\w+)' op"),  # MLIR legalization: 'tf.Foo' op is neither ...
    re.compile(r"op: '?(\w+)'?"),  # quantizer: Quantization not yet supported for op: 'FOO'
    re.compile(r"\((\w+)\) failed to (?:invoke|prepare)"),  # calibrator: Node n (FOO) failed
)


def convert_int8(
    model: Any,
    representative: np.ndarray,
    *,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    seed: int = 0,
) -> bytes:
    """Convert ``model`` to a full-integer int8 TFLite flatbuffer.

    ``representative`` is float32 ``(n, W, C)`` normal windows (already normalized);
    up to ``max_samples`` of them, drawn without replacement by ``seed`` and kept in
    their original order, calibrate the activation ranges, so the same inputs give
    the same bytes. The result has int8 input and output tensors with a dynamic batch.
    Raises ``ExportError`` naming the model kind (and the op, when the converter says
    which) on any failure.
    """
    kind = model_kind(model)
    window, channels = window_shape(model, context=kind)
    if max_samples < 1:
        raise ExportError(f"{kind}: max_samples must be >= 1, got {max_samples}")
    calibration = _calibration_windows(
        representative,
        window=window,
        channels=channels,
        max_samples=max_samples,
        seed=seed,
        kind=kind,
    )

    import tensorflow as tf

    def representative_dataset() -> Iterator[list[np.ndarray]]:
        for start in range(0, len(calibration), CALIBRATION_CHUNK):
            yield [calibration[start : start + CALIBRATION_CHUNK]]

    def configure(converter: Any) -> None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        # INT8 builtins only: an op without an int8 kernel fails the conversion instead
        # of being left in float behind a DEQUANTIZE.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8

    content = _convert(
        model,
        kind=kind,
        window=window,
        channels=channels,
        configure=configure,
        what="full-integer int8",
        calibrated=True,
    )
    float_ops = ops_with_float_tensors(content)
    if float_ops:
        raise ExportError(
            f"{kind}: int8 conversion left float tensors on ops {sorted(set(float_ops))}; "
            "the gateway needs a full-integer model"
        )
    return content


def convert_float(model: Any) -> bytes:
    """Convert ``model`` to a float32 TFLite flatbuffer (dynamic batch, float I/O).

    Used on the desk to measure what int8 quantization costs: the same
    ``Int8Autoencoder`` runs both files. Raises ``ExportError`` on failure.
    """
    kind = model_kind(model)
    window, channels = window_shape(model, context=kind)

    import tensorflow as tf

    def configure(converter: Any) -> None:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]

    return _convert(
        model, kind=kind, window=window, channels=channels, configure=configure, what="float32"
    )


def model_kind(model: Any) -> str:
    """The model kind from its name (``trainer.models`` names models ``{kind}_autoencoder``)."""
    name = str(getattr(model, "name", "") or "model")
    return name.removesuffix("_autoencoder")


def ops_with_float_tensors(content: bytes) -> list[str]:
    """Names of the ops (one entry per op, graph order) that read or write a float tensor.

    Parses the flatbuffer with TensorFlow's ``flatbuffer_utils`` rather than through
    an interpreter, so it also sees ops in every subgraph.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    parsed = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    found: list[str] = []
    for graph in parsed.subgraphs or []:
        for op in graph.operators or []:
            # The object API stores index lists as numpy arrays, or None when empty.
            indices = [
                *(op.inputs if op.inputs is not None else ()),
                *(op.outputs if op.outputs is not None else ()),
            ]
            # -1 marks an omitted optional input.
            if any(i >= 0 and graph.tensors[i].type in _FLOAT_TENSOR_TYPES for i in indices):
                found.append(flatbuffer_utils.opcode_to_name(parsed, op.opcodeIndex))
    return found


def _calibration_windows(
    representative: np.ndarray,
    *,
    window: int,
    channels: int,
    max_samples: int,
    seed: int,
    kind: str,
) -> np.ndarray:
    arr = check_windows(
        representative, window, channels, what="representative windows", context=kind
    )
    if arr.shape[0] > max_samples:
        rng = np.random.default_rng(seed)
        # Sorted so calibration order follows the recording, independent of draw order.
        idx = np.sort(rng.choice(arr.shape[0], size=max_samples, replace=False))
        arr = arr[idx]
    return np.ascontiguousarray(arr, dtype=np.float32)


def _convert(
    model: Any,
    *,
    kind: str,
    window: int,
    channels: int,
    configure: Callable[[Any], None],
    what: str,
    calibrated: bool = False,
) -> bytes:
    try:
        try:
            converter, graph_ops = _frozen_converter(model, window, channels)
        except ImportError:
            converter, graph_ops = None, frozenset()
        loops = sorted(graph_ops & _LOOP_OPS)
        if calibrated and loops:
            # Checked before converting: calibrating a WHILE loop segfaults the whole
            # process in TF 2.21 rather than raising, so it must never be reached.
            raise ExportError(
                f"{kind}: {what} conversion cannot quantize loop op(s) {loops}; build "
                "recurrent layers with unroll=True so the loop becomes plain ops"
            )
        if converter is not None:
            configure(converter)
            return _run_converter(converter)
        with tempfile.TemporaryDirectory(prefix="edge_anomaly_export_") as saved_model_dir:
            converter = _saved_model_converter(model, window, channels, saved_model_dir)
            configure(converter)
            return _run_converter(converter)
    except ExportError:
        raise
    except Exception as exc:
        raise _export_error(kind, what, exc) from exc


def _run_converter(converter: Any) -> bytes:
    with warnings.catch_warnings():
        # Emitted for every full-integer conversion from a representative dataset (the
        # input ranges come from calibration, not from user-given statistics).
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return bytes(converter.convert())


def _signature(window: int, channels: int) -> list[Any]:
    import tensorflow as tf

    # A dynamic batch in the signature makes the TFLite input [-1, W, C], which the
    # gateway resizes to whatever batch it runs.
    return [tf.TensorSpec((None, window, channels), tf.float32, name=INPUT_NAME)]


def _frozen_converter(model: Any, window: int, channels: int) -> tuple[Any, frozenset[str]]:
    """Converter over the model's inference graph with its weights folded into constants.

    Also returns the TensorFlow op types of that graph, for the loop check.

    Raises ImportError when this TensorFlow lacks ``convert_variables_to_constants_v2``
    (it lives under ``tensorflow.python``, which carries no stability promise).
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    @tf.function(input_signature=_signature(window, channels))
    def serve(windows: Any) -> Any:
        return model(windows, training=False)

    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    graph_ops = frozenset(node.op for node in frozen.graph.as_graph_def().node)
    return tf.lite.TFLiteConverter.from_concrete_functions([frozen]), graph_ops


def _saved_model_converter(model: Any, window: int, channels: int, directory: str) -> Any:
    """Converter over a SavedModel written by Keras (slower: serializes to disk)."""
    import tensorflow as tf

    model.export(
        directory,
        format="tf_saved_model",
        verbose=False,
        input_signature=_signature(window, channels),
    )
    return tf.lite.TFLiteConverter.from_saved_model(directory)


def _export_error(kind: str, what: str, exc: BaseException) -> ExportError:
    message = str(exc)
    op = None
    for pattern in _OP_PATTERNS:
        match = pattern.search(message)
        if match:
            op = match.group(1)
            break
    where = f" at unsupported op {op}" if op else ""
    # MLIR errors interleave "error: ..." lines with call-site notes; keep the errors.
    errors = list(dict.fromkeys(m.strip() for m in _MLIR_ERROR.findall(message)))
    brief = "; ".join(errors) if errors else " ".join(message.split())
    brief = brief[:MAX_MESSAGE_CHARS]
    return ExportError(
        f"{kind}: {what} TFLite conversion failed{where} ({type(exc).__name__}: {brief})"
    )
