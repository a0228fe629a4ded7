"""Gateway runner for the stage-2 autoencoder exported by ``export.tflite_int8``.

Pipeline position: ``edge_agent`` detection, after the Isolation Forest screen. The
caller passes windows of normalized samples, float32 ``(n, W, C)``; this class
quantizes them with the model's input (scale, zero_point), runs the TFLite
interpreter in batches, and dequantizes the reconstruction back to float32 so the
caller can compute reconstruction errors in real units. The same class runs a
float32 TFLite file (no quantization), which the desk uses for int8-vs-float parity.

Quantization and dequantization are Numba kernels (bit-identical to the numpy formulas they
replaced): for the daemon's one window per call, numpy's per-call overhead cost several times
the interpreter's own run.

Not thread-safe: one interpreter holds one set of tensors. Use one instance per thread.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.interpreter import TFLiteInterpreter, allocate, load_interpreter
from edge_agent.kernels import CALL, bind, kernel

INT8_MIN = int(np.iinfo(np.int8).min)
INT8_MAX = int(np.iinfo(np.int8).max)
WINDOW_RANK = 3  # (batch, time steps, channels)
# Windows per interpreter invocation. Larger batches were measured not to run faster (about
# 1.9 us per window from 64 to 16,384 with the dense int8 model on x86), and they cost memory.
DEFAULT_MAX_BATCH = 256

FloatArray = npt.NDArray[np.float32]


def _quantization(details: dict[str, Any], role: str) -> tuple[float, int] | None:
    """(scale, zero_point) of an int8 tensor, ``None`` for a float32 one."""
    dtype = np.dtype(details["dtype"])
    if dtype == np.float32:
        return None
    if dtype != np.int8:
        raise ValueError(f"model {role} tensor is {dtype}; expected int8 or float32")
    params = details.get("quantization_parameters", {})
    scales = np.asarray(params.get("scales", []))
    if scales.size > 1:
        # Per-channel activations never come out of the TFLite converter for I/O
        # tensors; refuse rather than silently use the first channel's scale.
        raise ValueError(f"model {role} tensor is per-channel quantized; expected per-tensor")
    scale, zero_point = details["quantization"]
    if not scale > 0.0:
        raise ValueError(f"model {role} tensor is int8 but has no quantization scale")
    return float(scale), int(zero_point)


@kernel("f4[:,:,:], f8, i8 -> (i1[:,:,:], b1)")
def _quantize_kernel(
    x: FloatArray, scale: float, zero_point: int
) -> tuple[npt.NDArray[np.int8], bool]:  # pragma: no cover - compiled
    """int8 codes of contiguous ``x`` (n, W, C), and False if a value is not finite (the codes
    are then meaningless).

    float32 arithmetic throughout, as the numpy version did: ``x / scale``, rounded half away
    from zero (TFLite's QUANTIZE kernel; ``np.round`` would round half to even), plus the
    zero point, clipped to int8. No branch in the loop, so LLVM vectorizes it.
    """
    flat = x.reshape(-1)
    out = np.empty(flat.shape[0], np.int8)
    s = np.float32(scale)
    zp = np.float32(zero_point)
    half = np.float32(0.5)
    lo = np.float32(INT8_MIN)
    hi = np.float32(INT8_MAX)
    finite = True
    for k in range(flat.shape[0]):
        v = flat[k]
        finite &= np.isfinite(v)
        scaled = v / s
        q = np.trunc(scaled + np.copysign(half, scaled)) + zp
        out[k] = np.int8(min(max(q, lo), hi))
    return out.reshape(x.shape), finite


@kernel("i1[:,:,:], f8, i8, f4[:,:,:]! -> none")
def _dequantize_kernel(
    y: npt.NDArray[np.int8], scale: float, zero_point: int, out: FloatArray
) -> None:  # pragma: no cover - compiled
    """``(y - zero_point) * scale`` in float32 into contiguous ``out`` (``y``'s first rows)."""
    s = np.float32(scale)
    zp = np.float32(zero_point)
    src = y.reshape(-1)
    dst = out.reshape(-1)
    for k in range(dst.shape[0]):
        dst[k] = (np.float32(src[k]) - zp) * s


class Int8Autoencoder:
    """Runs a window autoencoder TFLite model (full int8 or float32) on the gateway."""

    def __init__(
        self, model_bytes: bytes, *, num_threads: int = 1, max_batch: int = DEFAULT_MAX_BATCH
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        interpreter, backend = load_interpreter(model_bytes, num_threads=num_threads)
        self._interpreter: TFLiteInterpreter = interpreter
        self._backend = backend
        self._max_batch = max_batch

        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"expected a model with 1 input and 1 output, got {len(inputs)} and {len(outputs)}"
            )
        in_details, out_details = inputs[0], outputs[0]
        shape = [int(d) for d in in_details["shape"]]
        out_shape = [int(d) for d in out_details["shape"]]
        if len(shape) != WINDOW_RANK or out_shape[1:] != shape[1:]:
            raise ValueError(
                f"expected a (batch, W, C) -> (batch, W, C) model, got input {shape} "
                f"and output {out_shape}"
            )
        self._window, self._channels = shape[1], shape[2]
        self._input_index = int(in_details["index"])
        self._output_index = int(out_details["index"])
        self._input_q = _quantization(in_details, "input")
        self._output_q = _quantization(out_details, "output")
        if (self._input_q is None) != (self._output_q is None):
            raise ValueError("model mixes int8 and float32 input/output tensors")
        # The (de)quantization kernels with the model's parameters checked once.
        self._to_int8 = (
            None if self._input_q is None else bind(_quantize_kernel, CALL, *self._input_q)
        )
        self._from_int8 = (
            None
            if self._output_q is None
            else bind(_dequantize_kernel, CALL, *self._output_q, CALL)
        )
        # What an all-zero window quantizes to (static-batch padding).
        self._pad_value = self._quantize(np.zeros((1, shape[1], shape[2]), np.float32))[0]

        # The batch size the tensors are allocated for; resizing means re-allocating,
        # so it is only done when a call needs a different batch size.
        self._batch = shape[0]
        signature = in_details.get("shape_signature", in_details["shape"])
        # export.tflite_int8 writes a dynamic (-1) batch. A model frozen at a static
        # batch is still usable: chunks are then padded to exactly that size, since
        # resizing a static graph can break reshapes that baked the batch in.
        self._dynamic_batch = int(signature[0]) == -1
        if not self._dynamic_batch:
            self._max_batch = self._batch
        allocate(interpreter)

    @property
    def window(self) -> int:
        """Time steps per window (W)."""
        return self._window

    @property
    def channels(self) -> int:
        """Sensor channels per time step (C)."""
        return self._channels

    @property
    def is_int8(self) -> bool:
        """True for a full-integer model, False for a float32 one."""
        return self._input_q is not None

    @property
    def backend(self) -> str:
        """Which TFLite runtime runs the model (see ``edge_agent.interpreter``)."""
        return self._backend

    @property
    def max_batch(self) -> int:
        """Largest number of windows passed to one interpreter invocation."""
        return self._max_batch

    def reconstruct(self, windows: npt.ArrayLike) -> FloatArray:
        """Reconstruct float32 ``(n, W, C)`` windows; returns float32 ``(n, W, C)``.

        Raises ``ValueError`` when the shape is not ``(n, W, C)`` for this model or a
        value is not finite (NaN cannot be quantized; the caller should drop or
        impute such samples before windowing).
        """
        x = np.asarray(windows, dtype=np.float32)
        expected = (self._window, self._channels)
        if x.ndim != WINDOW_RANK or x.shape[1:] != expected:
            raise ValueError(
                f"expected windows of shape (n, {self._window}, {self._channels}), got {x.shape}"
            )
        x = np.ascontiguousarray(x)
        n = x.shape[0]
        out = np.empty((n, *expected), dtype=np.float32)
        if n == 0:
            return out
        # All windows are checked (and quantized) before the first invocation.
        model_input = self._quantize(x)
        for start in range(0, n, self._max_batch):
            stop = min(start + self._max_batch, n)
            self._run(model_input[start:stop], out[start:stop])
        return out

    def _run(self, batch: npt.NDArray[Any], out: FloatArray) -> None:
        size = batch.shape[0]
        if self._dynamic_batch:
            self._ensure_batch(size)
        elif size < self._batch:
            # Padding rows are what a window of zeros quantizes to; their outputs are dropped.
            padding = np.broadcast_to(self._pad_value, (self._batch - size, *batch.shape[1:]))
            batch = np.concatenate([batch, padding])
        self._interpreter.set_tensor(self._input_index, batch)
        self._interpreter.invoke()
        y = self._interpreter.get_tensor(self._output_index)
        if self._from_int8 is None:
            out[:] = y[:size]
        else:
            self._from_int8(y, out)

    def _ensure_batch(self, size: int) -> None:
        if size == self._batch:
            return
        # strict=True: only the dynamic (-1) batch dimension may change.
        self._interpreter.resize_tensor_input(
            self._input_index, [size, self._window, self._channels], strict=True
        )
        self._interpreter.allocate_tensors()
        self._batch = size

    def _quantize(self, x: FloatArray) -> npt.NDArray[Any]:
        """The model's input for float32 windows ``x``; ValueError if a value is not finite."""
        if self._to_int8 is None:
            if not np.isfinite(x).all():
                raise ValueError("windows contain NaN or infinite values")
            return x
        q, finite = self._to_int8(x)
        if not finite:
            raise ValueError("windows contain NaN or infinite values")
        return q
