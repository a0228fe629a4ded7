"""The trainer's settings (``trainer.config``): what an ``[alerts]`` table changes, and how a
bad one is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from trainer.config import DEFAULT_ALERTS, TrainConfig, load_config


def test_fit_writes_the_deadband_by_default() -> None:
    assert TrainConfig().alerts == DEFAULT_ALERTS
    assert DEFAULT_ALERTS.hold_ratio < 1.0


def test_an_alerts_table_changes_only_the_keys_it_names(tmp_path: Path) -> None:
    path = tmp_path / "train.toml"
    path.write_text("[alerts]\nopen_after = 2\n", encoding="utf-8")
    alerts = load_config(path).alerts
    assert alerts.open_after == 2
    assert (alerts.close_after, alerts.hold_ratio) == (
        DEFAULT_ALERTS.close_after,
        DEFAULT_ALERTS.hold_ratio,
    )


def test_a_bad_alerts_table_names_each_wrong_key(tmp_path: Path) -> None:
    path = tmp_path / "train.toml"
    path.write_text("[alerts]\nhold_ratio = 1.5\nclose = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "alerts.hold_ratio" in str(err.value)
    assert "alerts.close" in str(err.value)
    assert str(path) in str(err.value)
