"""Probation: a new model's first minutes of running, watched against its bounds.

The main loop (through the updater) counts, for the windows the new model scores, how many
are in the alert state and how many could not be scored, plus the ticks whose scoring
failed; the updater's thread asks :meth:`Probation.verdict` now and then. Crossing a bound
means roll back, lasting ``[ota] probation_s`` of running time means mark good. Running time
restarts at every agent start (each start is counted as a boot instead, see
``edge_agent.ota.boot``).

The alert-share bound is ``[ota] probation_max_alert_share``, or the share the model it
replaced alerted on over the canary's rows when that was higher: a machine that was already in
alert (a real fault, or a machine the fleet's model does not know yet) is not a reason to
roll back a model that alerts no more than the old one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from edge_agent.detect.cascade import STAGE_AUTOENCODER, STAGE_SCREEN, STAGE_SKIPPED
from edge_agent.ota.config import OtaConfig
from edge_agent.pipeline import WindowBatch

# The alert share is judged once this many windows were scored: a few windows at the moment
# of the switch say little (an alert the old model had open may still be running).
MIN_PROBATION_WINDOWS = 30


@dataclass(frozen=True)
class Tally:
    windows: int  # windows the model scored
    alerts: int  # of which in the alert state
    errors: int  # failed ticks plus windows not scorable
    running_s: float

    @property
    def share(self) -> float:
        return self.alerts / self.windows if self.windows else 0.0


class Probation:
    """Counts of one model on probation; updated from the main loop, read from the updater."""

    def __init__(self, cfg: OtaConfig, *, baseline_share: float | None = None) -> None:
        self._cfg = cfg
        self._limit = max(cfg.probation_max_alert_share, baseline_share or 0.0)
        self._baseline = baseline_share
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._windows = self._alerts = self._errors = 0

    def record(self, batch: WindowBatch) -> None:
        if not batch.size:
            return
        scored = (batch.stage == STAGE_SCREEN) | (batch.stage == STAGE_AUTOENCODER)
        n = int(np.count_nonzero(scored))
        alerts = int(np.count_nonzero(batch.alert & scored))
        skipped = int(np.count_nonzero(batch.stage == STAGE_SKIPPED))
        with self._lock:
            self._windows += n
            self._alerts += alerts
            self._errors += skipped

    def error(self) -> None:
        with self._lock:
            self._errors += 1

    def tally(self) -> Tally:
        with self._lock:
            return Tally(self._windows, self._alerts, self._errors,
                         time.monotonic() - self._started)

    def verdict(self) -> tuple[bool | None, str]:
        """(False, why) to roll back, (True, summary) to mark good, (None, "") to go on."""
        t = self.tally()
        c = self._cfg
        if t.errors > c.probation_max_errors:
            return False, (
                f"{t.errors} scoring errors and unscorable windows in probation, over "
                f"[ota] probation_max_errors = {c.probation_max_errors}"
            )
        if t.windows >= MIN_PROBATION_WINDOWS and t.share > self._limit:
            over = (
                f"[ota] probation_max_alert_share = {c.probation_max_alert_share:.0%}"
                if self._limit == c.probation_max_alert_share
                else f"the {self._limit:.0%} the replaced model alerted on at canary"
            )
            return False, (
                f"alert state on {t.share:.0%} of {t.windows} windows in probation, over {over}"
            )
        if t.running_s >= c.probation_s:
            return True, (
                f"{t.running_s:.0f} s on probation: {t.windows} windows, alert share "
                f"{t.share:.1%}, {t.errors} errors"
            )
        return None, ""
