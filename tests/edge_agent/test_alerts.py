"""The alert hysteresis (``edge_agent.detect.alerts``): counts to open and close, and the
deadband that holds an open alert while a window's error stays above ``hold_ratio`` of the
threshold."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.detect.alerts import AlertPolicy, AlertState


def _bits(text: str) -> np.ndarray:
    return np.array([c == "1" for c in text])


def _run(policy: AlertPolicy, raw: str, hold: str | None = None) -> str:
    out = AlertState(policy).update(_bits(raw), None if hold is None else _bits(hold))
    return "".join("1" if a else "0" for a in out)


def test_opens_after_and_closes_after_consecutive_windows() -> None:
    p = AlertPolicy(open_after=2, close_after=3)
    assert _run(p, "1010110001100") == "0000011100111"


def test_deadband_holds_an_open_alert_through_quieter_windows() -> None:
    p = AlertPolicy(open_after=2, close_after=3, hold_ratio=0.5)
    raw = "11000000000"
    hold = "11111100000"  # at or above half the threshold until the sixth window
    assert _run(p, raw, hold) == "01111111000"
    # Without the deadband's windows the same alert closes three windows after the last raw.
    assert _run(p, raw) == "01110000000"


def test_deadband_alone_never_opens_an_alert() -> None:
    p = AlertPolicy(open_after=2, close_after=3, hold_ratio=0.5)
    assert _run(p, "0000000", "1111111") == "0000000"
    # ... and after a close, the next opening needs raw windows again.
    assert _run(p, "1100000110", "1111000111") == "0111110011"


def test_state_carries_across_calls() -> None:
    p = AlertPolicy(open_after=2, close_after=2, hold_ratio=0.5)
    whole, parts = AlertState(p), AlertState(p)
    raw, hold = _bits("1100011000"), _bits("1111011100")
    want = whole.update(raw, hold)
    got = np.concatenate([parts.update(raw[a:b], hold[a:b]) for a, b in ((0, 3), (3, 4), (4, 10))])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.01])
def test_hold_ratio_outside_zero_to_one_is_refused(ratio: float) -> None:
    with pytest.raises(ValidationError, match="hold_ratio"):
        AlertPolicy(hold_ratio=ratio)


def test_a_manifest_without_the_key_has_no_deadband() -> None:
    """Bundles exported before the deadband existed keep the alerts they had."""
    assert AlertPolicy.model_validate({"open_after": 3, "close_after": 10}).hold_ratio == 1.0
