"""The ``[learn]`` table: off by default, needs a broker, its key resolved like every path,
settings checked, and validation that stays light (no numpy, no key read)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config.load import ConfigErrors, load_config
from edge_agent.config.model import AgentConfig

ROOT = Path(__file__).resolve().parents[3]
BASE = """machine_id = "m1"
[model]
bundle = "b"
trust_key = "k.pub"
[[sources]]
type = "replay"
path = "plant.csv"
"""
MQTT = '[mqtt]\nhost = "127.0.0.1"\n'


def _load(tmp_path: Path, text: str, *overrides: str) -> AgentConfig:
    p = tmp_path / "machine" / "agent.toml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(BASE + text)
    return load_config(p, overrides)


def test_off_by_default_and_the_key_resolves_against_its_file(tmp_path: Path) -> None:
    assert not _load(tmp_path, "").learn.enabled
    cfg = _load(tmp_path, MQTT + '[learn]\nenabled = true\ndevice_key = "keys/device.key"\n')
    assert cfg.learn.device_key == tmp_path / "machine" / "keys" / "device.key"
    assert cfg.learn.chunk_rows == 600
    assert cfg.learn.sample_every_s == 1800.0


def test_enabled_without_a_broker_or_with_bad_settings_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors, match=r"\[learn\] enabled needs \[mqtt\]"):
        _load(tmp_path, "[learn]\nenabled = true\n")
    with pytest.raises(ConfigErrors, match="normal_score_ratio"):
        _load(tmp_path, MQTT + "[learn]\nnormal_score_ratio = 2\n")
    with pytest.raises(ConfigErrors, match="shorter than a round's CPU budget"):
        _load(tmp_path, MQTT + "[learn]\nevery_s = 10\nmax_cpu_s = 60\n")
    with pytest.raises(ConfigErrors, match="epoks"):
        _load(tmp_path, MQTT + "[learn]\nepoks = 3\n")


def test_the_config_model_does_not_load_the_learning_code() -> None:
    probe = ("import sys, edge_agent.config.model; "
             "print(sorted(m for m in ('numpy', 'numba', 'edge_agent.learn.local') "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
