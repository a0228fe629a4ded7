"""Errors raised by the export stage (desk side, between ``trainer`` and ``edge_agent``).

Kept in its own module so callers (CLI, CI scripts) can catch export failures without
importing TensorFlow.
"""

from __future__ import annotations


class ExportError(RuntimeError):
    """A trained model could not be converted into a TFLite file the gateway can run."""
