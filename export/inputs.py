"""Checks shared by the export backends: the model's window shape and the sample windows.

Every backend (int8 TFLite, Edge TPU, ONNX) takes a Keras window model and a batch of
windows; both are checked here once, with messages that say what to fix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from export.errors import ExportError

WINDOW_RANK = 3  # (batch, W, C)


def window_shape(model: Any, *, context: str = "") -> tuple[int, int]:
    """(W, C) of a single-input window model, from its declared input shape.

    ``context`` (e.g. the model kind) prefixes error messages.
    """
    pre = f"{context}: " if context else ""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        raise ExportError(
            f"{pre}model must be a built Keras model with exactly one (batch, W, C) input; "
            "build it with keras.Input((W, C)) first"
        )
    shape = tuple(inputs[0].shape)
    if len(shape) != WINDOW_RANK or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise ExportError(f"{pre}model input must be (batch, W, C) with known W and C, got {shape}")
    return int(shape[1]), int(shape[2])


def check_windows(
    windows: np.ndarray, window: int, channels: int, *, what: str, context: str = ""
) -> np.ndarray:
    """``windows`` as float32 ``(n, W, C)``; ``what`` names them in the error message."""
    pre = f"{context}: " if context else ""
    arr = np.asarray(windows)
    if arr.ndim != WINDOW_RANK or arr.shape[1:] != (window, channels) or arr.shape[0] == 0:
        raise ExportError(
            f"{pre}{what} must have shape (n, {window}, {channels}) with n >= 1 to match the model "
            f"input, got {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise ExportError(f"{pre}{what} must be finite numbers (no NaN/inf)")
    return arr.astype(np.float32, copy=False)
