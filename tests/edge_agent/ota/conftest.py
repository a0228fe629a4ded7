"""Fixtures of the updater's tests: bundle variants (made once per session) and a gateway config.

Variants come from the session's real bundle (``bundle`` in tests/conftest.py), edited and
re-signed as a desk would with ``export sign`` (``tests/ota_desk.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ota_desk import MACHINE, alert_everything, variant

from edge_agent.config.model import AgentConfig
from edge_agent.data.table import SensorTable, read_table
from edge_agent.detect.windows import FEATURE_SET_VERSION
from edge_agent.ota.canary import History
from export.keys import keygen

CHANNELS = ["pressure_bar", "motor_current_a", "oil_temp_c", "flow_m3min", "vibration_rms_mms"]
HISTORY_ROWS = 600  # rows of plant history the canary tests score (ten minutes at 1 Hz)


@pytest.fixture(scope="session")
def variants(work: Path, bundle: Path, keys: Path) -> dict[str, Path]:
    """Signed bundles a desk could make, by what is special about them."""
    key = keys / "signing.key"
    root = work / "variants"
    root.mkdir()
    other_key, _ = keygen(root / "other-key")

    def renamed(doc: dict[str, Any]) -> None:
        doc["channels"][0]["name"] = "spindle_rpm"

    def features(doc: dict[str, Any]) -> None:
        doc["window"]["feature_set"] = FEATURE_SET_VERSION + 1

    def older(doc: dict[str, Any]) -> None:
        doc["created_at"] = "2020-01-01T00:00:00Z"

    def newest(doc: dict[str, Any]) -> None:
        doc["created_at"] = "2099-01-01T00:00:00Z"

    junk = bytes(range(256)) * 64
    return {
        "newer": variant(bundle, root / "newer", key, version="v-newer"),
        "newest": variant(bundle, root / "newest", key, edit=newest, new_release=False,
                          version="v-newest"),
        "alerting": variant(bundle, root / "alerting", key, edit=alert_everything,
                            version="v-alerting"),
        "corrupt": variant(bundle, root / "corrupt", key, files={"model_int8.tflite": junk},
                           version="v-corrupt"),
        "channels": variant(bundle, root / "channels", key, edit=renamed, version="v-channels"),
        "features": variant(bundle, root / "features", key, edit=features, version="v-features"),
        "older": variant(bundle, root / "older", key, edit=older, new_release=False,
                         version="v-older"),
        "foreign": variant(bundle, root / "foreign", other_key, version="v-foreign"),
    }


@pytest.fixture
def gateway_config(tmp_path: Path, keys: Path) -> Callable[..., AgentConfig]:
    """An agent config for one gateway with OTA on (``**ota`` sets [ota] fields)."""

    def make(
        *, bundle: Path | None = None, state: Path | None = None, port: int = 1883, **ota: Any
    ) -> AgentConfig:
        model: dict[str, Any] = {"trust_key": str(keys / "signing.pub")}
        if bundle is not None:
            model["bundle"] = str(bundle)
        return AgentConfig.model_validate({
            "machine_id": MACHINE,
            "state_dir": str(state or tmp_path / "state"),
            "model": model,
            "sources": [{"type": "serial_line", "name": "board", "port": "/dev/null",
                         "columns": CHANNELS}],
            "mqtt": {"host": "127.0.0.1", "port": port, "backoff_initial_s": 0.1,
                     "backoff_max_s": 0.5, "keepalive_s": 5},
            "ota": {"enabled": True, **ota},
        })

    return make


@pytest.fixture(scope="session")
def plant(sim_csv: Path) -> SensorTable:
    return read_table(sim_csv)


@pytest.fixture(scope="session")
def history(plant: SensorTable) -> History:
    """Fault-free plant rows as the agent would have seen them."""
    t = plant.select(CHANNELS)
    n = HISTORY_ROWS
    return History(np.array(t.timestamps[:n]), np.array(t.values[:n]), list(CHANNELS))
