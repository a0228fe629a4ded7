"""Which scored rows count as this machine's normal data: the buffer's selection rule.

Pipeline position: fleet learning, right after the streaming pipeline has scored a push of
rows. The daemon's learner (``edge_agent.learn.learner``) and the offline twin ``edge_agent
adapt`` both call :class:`NormalRows` with what the pipeline made, so a history file and the
live gateway keep exactly the same rows.

A row is kept when the window current at its grid point (``WindowBatch.row_window``) was judged
normal: passed by the forest screen, or scored by the autoencoder with an error below
``normal_score_ratio x`` the alert threshold, and neither in alert (the hysteresis state,
which is what holds an episode open) nor a raw alert. A push with a sensor fault (a fault event
or a faulty channel), or after which an episode is open, keeps nothing; neither does a row with
a missing value (data quality's NaN) or one with no window yet.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge_agent.detect.cascade import STAGE_AUTOENCODER, STAGE_SCREEN
from edge_agent.pipeline import WindowBatch

BOOL = npt.NDArray[np.bool_]
F64 = npt.NDArray[np.float64]


def normal_windows(batch: WindowBatch, alert_threshold: float, ratio: float) -> BOOL:
    """Per window of ``batch``: judged normal by the rule in the module docstring."""
    quiet = ~(batch.alert | batch.raw_alert)
    screened = batch.stage == STAGE_SCREEN
    with np.errstate(invalid="ignore"):  # error is NaN where stage 2 did not run
        low = (batch.stage == STAGE_AUTOENCODER) & (batch.error < ratio * alert_threshold)
    out: BOOL = quiet & (screened | low)
    return out


class NormalRows:
    """The selection rule with the one bit of state it needs across pushes: the verdict on
    the latest window, for rows whose window was completed by an earlier push (hop > 1)."""

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self._last_id = -1  # id of the latest window judged
        self._last_normal = False

    def reset(self) -> None:
        """Forget the latest window (a new model: its window ids start over)."""
        self._last_id = -1
        self._last_normal = False

    def keep(
        self, rows: F64, batch: WindowBatch, alert_threshold: float, *, fault: bool,
        open_episode: bool,
    ) -> BOOL:
        """Per row of the push that made ``batch``: keep it in the buffer."""
        n = rows.shape[0]
        verdict = normal_windows(batch, alert_threshold, self.ratio)
        ids = batch.row_window
        keep = np.zeros(n, np.bool_)
        if not (fault or open_episode):
            local = ids - batch.first_window
            here = (ids >= 0) & (local >= 0)
            keep[here] = verdict[local[here]]
            earlier = (ids >= 0) & (local < 0) & (ids == self._last_id)
            keep[earlier] = self._last_normal
            keep &= np.isfinite(rows).all(axis=1)
        if batch.size:
            self._last_id = batch.first_window + batch.size - 1
            self._last_normal = bool(verdict[-1])
        return keep
