"""Alert hysteresis: from one decision per window to alert episodes.

Sits at the end of the cascade. A single window over threshold is often noise; a machine that
is failing stays abnormal. An alert opens after ``open_after`` consecutive raw alerts and
closes after ``close_after`` consecutive normal windows, so one episode is reported once and
does not flap. While it is open, a window counts as abnormal down to ``hold_ratio`` of the alert
threshold: the deadband alarm management gives an analog alarm (ISA-18.2), so a fault whose
error wavers about the threshold stays one alert instead of closing and reopening. The state
is three counters, carried across calls, so batch ``replay`` and the streaming daemon give the
same answer.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from pydantic import Field

from edge_agent.config.strict import StrictModel
from edge_agent.kernels import CALL, bind, kernel


class AlertPolicy(StrictModel):
    """How raw window decisions become an alert state."""

    open_after: int = Field(default=3, ge=1, description="Consecutive abnormal windows to open")
    close_after: int = Field(default=10, ge=1, description="Consecutive normal windows to close")
    hold_ratio: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="While an alert is open, a window at or above this share of the alert "
        "threshold still counts as abnormal (a deadband; 1, as in bundles that predate it: none)",
    )


@kernel("b1[:], b1[:], i8, i8, i8[:]! -> b1[:]")
def _hysteresis(
    raw: npt.NDArray[np.bool_],
    hold: npt.NDArray[np.bool_],
    open_after: int,
    close_after: int,
    state: npt.NDArray[np.int64],
) -> npt.NDArray[np.bool_]:  # pragma: no cover - compiled
    # raw: at or above the alert threshold; hold: at or above the deadband's lower edge.
    # state = [alert_on (0/1), consecutive abnormal, consecutive normal]
    out = np.empty(raw.shape[0], np.bool_)
    for i in range(raw.shape[0]):
        if hold[i] if state[0] == 1 else raw[i]:
            state[1] += 1
            state[2] = 0
        else:
            state[2] += 1
            state[1] = 0
        if state[0] == 0 and state[1] >= open_after:
            state[0] = 1
        elif state[0] == 1 and state[2] >= close_after:
            state[0] = 0
        out[i] = state[0] == 1
    return out


class AlertState:
    """Hysteresis state of one machine; feed it raw decisions in time order."""

    def __init__(self, policy: AlertPolicy) -> None:
        self.policy = policy
        self._state = np.zeros(3, dtype=np.int64)
        # Policy and state checked once; the state is only ever changed in place.
        self._update = bind(
            _hysteresis, CALL, CALL, policy.open_after, policy.close_after, self._state
        )

    def update(
        self, raw: npt.NDArray[np.bool_], hold: npt.NDArray[np.bool_] | None = None
    ) -> npt.NDArray[np.bool_]:
        """Alert state after each window. ``raw``: the window's error at or above the alert
        threshold; ``hold``: at or above ``hold_ratio`` of it (``raw`` itself when omitted, as
        with no deadband)."""
        r = np.ascontiguousarray(raw, dtype=np.bool_)
        return self._update(r, r if hold is None else np.ascontiguousarray(hold, np.bool_))

    @property
    def is_open(self) -> bool:
        """Whether the alert is open after the last decision fed in."""
        return bool(self._state[0])

    def snapshot(self) -> npt.NDArray[np.int64]:
        """A copy of the counters, for :meth:`restore` (a caller that decides again)."""
        return self._state.copy()

    def restore(self, snapshot: npt.NDArray[np.int64]) -> None:
        self._state[:] = snapshot

    def reset(self) -> None:
        self._state[:] = 0
