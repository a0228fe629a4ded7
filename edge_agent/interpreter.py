"""TFLite interpreter loader for the gateway (``edge_agent``), the last pipeline stage.

``export`` produces int8 TFLite files on the desk; here we pick whichever TFLite
runtime the gateway has. The preferred one is ``ai-edge-litert`` (the maintained
LiteRT wheel), then the legacy ``tflite-runtime``, and only as a last resort full
TensorFlow, which is imported lazily so the gateway never pulls it in when a light
runtime exists. Nothing in ``edge_agent`` may import TensorFlow or scikit-learn at
module level.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy.typing as npt

logger = logging.getLogger("edge_agent.interpreter")

BACKEND_LITERT = "ai-edge-litert"
BACKEND_TFLITE_RUNTIME = "tflite-runtime"
BACKEND_TENSORFLOW = "tensorflow"

INSTALL_HINT = 'pip install "edge-anomaly[edge]" (or: pip install ai-edge-litert)'


class TFLiteInterpreter(Protocol):
    """The subset of the TFLite ``Interpreter`` API that ``edge_agent`` relies on.

    All three backends expose the same Python class API, so one protocol covers them.
    """

    def allocate_tensors(self) -> None: ...

    def invoke(self) -> None: ...

    def get_input_details(self) -> list[dict[str, Any]]: ...

    def get_output_details(self) -> list[dict[str, Any]]: ...

    def resize_tensor_input(
        self, input_index: int, tensor_size: Sequence[int], strict: bool = False
    ) -> None: ...

    def set_tensor(self, tensor_index: int, value: npt.NDArray[Any]) -> None: ...

    def get_tensor(self, tensor_index: int) -> npt.NDArray[Any]: ...


_InterpreterFactory = Callable[..., TFLiteInterpreter]


def _litert_factory() -> _InterpreterFactory:
    from ai_edge_litert.interpreter import Interpreter

    factory: _InterpreterFactory = Interpreter
    return factory


def _tflite_runtime_factory() -> _InterpreterFactory:
    from tflite_runtime.interpreter import Interpreter

    factory: _InterpreterFactory = Interpreter
    return factory


def _tensorflow_factory() -> _InterpreterFactory:
    # Heavy (hundreds of MB, seconds to import): reached only when neither light
    # runtime is installed, e.g. on a desk machine without the `edge` extra.
    import tensorflow as tf

    factory: _InterpreterFactory = tf.lite.Interpreter
    return factory


# Order is the preference order; the first importable backend wins.
_BACKENDS: tuple[tuple[str, Callable[[], _InterpreterFactory]], ...] = (
    (BACKEND_LITERT, _litert_factory),
    (BACKEND_TFLITE_RUNTIME, _tflite_runtime_factory),
    (BACKEND_TENSORFLOW, _tensorflow_factory),
)


def load_interpreter(model_bytes: bytes, *, num_threads: int = 1) -> tuple[TFLiteInterpreter, str]:
    """Create an interpreter for ``model_bytes`` from the first available runtime.

    Returns the interpreter (tensors not yet allocated) and the backend's name:
    ``"ai-edge-litert"``, ``"tflite-runtime"`` or ``"tensorflow"``. Raises
    ``RuntimeError`` with an install hint when no runtime is importable. Errors from
    parsing the model itself propagate unchanged: a corrupt file is not a reason to
    try another runtime.
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    missing: list[str] = []
    for name, get_factory in _BACKENDS:
        try:
            factory = get_factory()
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
            continue
        interpreter = factory(model_content=bytes(model_bytes), num_threads=num_threads)
        logger.info("loaded TFLite interpreter from %s (num_threads=%d)", name, num_threads)
        return interpreter, name
    raise RuntimeError(
        "no TFLite runtime is installed; tried " + "; ".join(missing) + f". Install: {INSTALL_HINT}"
    )


# LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." from C++ straight to
# file descriptor 2, once per process, at the first allocation; no setting turns it off. The
# first allocation happens before the daemon starts any thread, so hiding fd 2 around it
# cannot swallow another thread's log line. ``show_runtime_log(True)`` (``--verbose``) keeps it.
_quiet = {"enabled": True, "done": False}
_quiet_lock = threading.Lock()


def show_runtime_log(enabled: bool) -> None:
    """Show (True) or hide (False, the default) the runtime's one-time start-up line."""
    _quiet["enabled"] = not enabled


def allocate(interpreter: TFLiteInterpreter) -> None:
    """``interpreter.allocate_tensors()``, hiding the runtime's start-up line the first time
    in this process; on an error, what it printed is shown after all."""
    with _quiet_lock:
        first = _quiet["enabled"] and not _quiet["done"]
        _quiet["done"] = True
    if not first:
        interpreter.allocate_tensors()
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as scratch:
        os.dup2(scratch.fileno(), 2)
        try:
            interpreter.allocate_tensors()
        except BaseException:
            os.dup2(saved, 2)
            scratch.seek(0)
            os.write(2, scratch.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
