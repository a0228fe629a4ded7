"""Rows of a sensor history as the normalized windows the device's autoencoder scores.

Pipeline position: fleet learning's input. The daemon's buffer keeps windows straight from the
streaming pipeline; the offline twin (``edge_agent adapt``), tests and benchmarks start from a
history file instead and come here. Nothing is re-implemented: the rows go through the
pipeline's own grid, normalisation and window ends (``edge_agent.pipeline.prepare``, the path
``tests/edge_agent/test_streaming.py`` shows bit-identical to the streaming pipeline) and the
windows are gathered with the kernel the streaming ring mirrors
(``edge_agent.detect.windows.gather_windows``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge_agent.bundle.manifest import Manifest
from edge_agent.data.table import SensorTable
from edge_agent.detect.windows import gather_windows
from edge_agent.pipeline import prepare


def history_windows(
    table: SensorTable, manifest: Manifest, *, hop: int | None = None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """Normalized windows ``(n, W, C)`` of ``table`` and the epoch time each one ends at.

    ``hop`` overrides the manifest's hop between windows (1 gives every complete window, for
    short histories); windows with too many imputed cells are left out as on the device.
    """
    spec = manifest
    if hop is not None:
        if hop < 1:
            raise ValueError(f"hop must be >= 1, got {hop}")
        spec = manifest.model_copy(
            update={"window": manifest.window.model_copy(update={"hop": hop})}
        )
    grid, xn, ends = prepare(table, spec)
    windows = gather_windows(xn, ends, spec.window.length)
    return windows, grid.times[ends]
