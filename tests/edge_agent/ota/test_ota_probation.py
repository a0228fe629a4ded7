"""Probation's verdicts: the alert-share bound, absolute or the replaced model's at canary."""

from __future__ import annotations

import numpy as np

from edge_agent.detect.cascade import STAGE_SCREEN
from edge_agent.ota.config import OtaConfig
from edge_agent.ota.probation import MIN_PROBATION_WINDOWS, Probation
from edge_agent.pipeline import WindowBatch

WINDOWS = 2 * MIN_PROBATION_WINDOWS


def batch(alerting: int, windows: int = WINDOWS) -> WindowBatch:
    """``windows`` windows scored by the screen, the first ``alerting`` in the alert state."""
    f64, i64 = np.zeros(windows), np.zeros(windows, np.int64)
    alert = np.arange(windows) < alerting
    return WindowBatch(
        first_window=0, end_time=f64, end_index=i64, segment=i64,
        stage=np.full(windows, STAGE_SCREEN, np.int8), score=f64, p_anomaly=f64,
        raw_alert=alert, alert=alert, error=f64, contributions=np.zeros((windows, 1), np.float32),
        row_window=i64, current_segment=0,
    )  # fmt: skip


def test_over_the_configured_share_rolls_back() -> None:
    p = Probation(OtaConfig(probation_max_alert_share=0.5))
    p.record(batch(alerting=int(0.6 * WINDOWS)))
    ok, why = p.verdict()
    assert ok is False
    assert "over [ota] probation_max_alert_share = 50%" in why


def test_a_machine_already_in_alert_does_not_roll_back_a_model_alerting_no_more() -> None:
    # The replaced model alerted on 90 % of the canary rows: the machine, not the model.
    p = Probation(OtaConfig(probation_max_alert_share=0.5, probation_s=3600), baseline_share=0.9)
    p.record(batch(alerting=int(0.6 * WINDOWS)))
    assert p.verdict() == (None, "")
    p.record(batch(alerting=WINDOWS))  # now 80 %: still no more than the old model
    assert p.verdict() == (None, "")
    p.record(batch(alerting=4 * WINDOWS, windows=4 * WINDOWS))  # 93 %: more than it
    ok, why = p.verdict()
    assert ok is False
    assert "over the 90% the replaced model alerted on at canary" in why


def test_a_quiet_baseline_keeps_the_configured_bound() -> None:
    p = Probation(OtaConfig(probation_max_alert_share=0.5), baseline_share=0.1)
    p.record(batch(alerting=int(0.6 * WINDOWS)))
    ok, why = p.verdict()
    assert ok is False
    assert "probation_max_alert_share = 50%" in why
