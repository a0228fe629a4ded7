"""trainer.fit.level_baseline: which channels get an adapting level on the gateway."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.data.table import SensorTable
from edge_agent.errors import DataError
from trainer.config import BaselineConfig, TrainConfig
from trainer.fit import level_baseline


def _table(anomaly_at: slice | None = None) -> SensorTable:
    """An hour at 1 s: one channel warms by 10 spreads, one holds its level."""
    rng = np.random.default_rng(3)
    t = 1.7e9 + np.arange(3_600.0)
    warm = 20.0 + 10.0 * np.arange(t.size) / t.size + rng.normal(0, 1.0, t.size)
    steady = 5.0 + rng.normal(0, 1.0, t.size)
    labels = np.zeros(t.size, np.int8)
    values = np.stack([warm, steady], axis=1)
    if anomaly_at is not None:
        labels[anomaly_at] = 1
        values[anomaly_at, 1] += 50.0  # a labelled fault must not make a channel "trend"
    return SensorTable("h.csv", t, values, ("warm", "steady"), {"anomaly": labels})


def _cfg(**baseline: object) -> TrainConfig:
    return TrainConfig(baseline=BaselineConfig.model_validate(baseline))


def test_trending_channels_adapt_and_steady_ones_keep_their_level() -> None:
    spec = level_baseline(_table(anomaly_at=slice(2_400, 3_600)), _cfg())
    assert spec is not None
    assert spec.channels == ["warm"]
    assert spec.time_constant_s == BaselineConfig().time_constant_s


def test_the_setting_can_name_all_none_or_the_channels() -> None:
    table = _table()
    assert level_baseline(table, _cfg(adapt="none")) is None
    spec = level_baseline(table, _cfg(adapt="all"))
    assert spec is not None
    assert spec.channels == ["warm", "steady"]
    spec = level_baseline(table, _cfg(adapt=["steady"], time_constant_s=60.0))
    assert spec is not None
    assert spec.channels == ["steady"]
    assert spec.time_constant_s == 60.0
    with pytest.raises(DataError, match=r"\[baseline\] adapt names channels the history lacks"):
        level_baseline(table, _cfg(adapt=["steady", "nope"]))
