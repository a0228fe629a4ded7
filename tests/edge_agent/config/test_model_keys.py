"""The ``[model]`` table: several trusted keys for key rotation, resolved like every path, and
a bundle that may be left out (for over-the-air updates) but not mistyped."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config.load import ConfigErrors, load_config
from edge_agent.config.model import AgentConfig

SOURCES = """
[[sources]]
type = "replay"
path = "plant.csv"
"""


def _load(tmp_path: Path, model: str, *overrides: str) -> AgentConfig:
    p = tmp_path / "machine" / "agent.toml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(f'machine_id = "m1"\n[model]\n{model}\n{SOURCES}')
    return load_config(p, overrides)


def test_extra_trust_keys_resolve_against_their_file_and_follow_trust_key(
    tmp_path: Path,
) -> None:
    cfg = _load(
        tmp_path,
        'bundle = "bundles/current"\ntrust_key = "keys/2024.pub"\n'
        'extra_trust_keys = ["keys/2025.pub", "/etc/edge-agent/keys/next.pub"]',
    )
    here = tmp_path / "machine"
    assert cfg.model.trusted_keys == [
        here / "keys" / "2024.pub", here / "keys" / "2025.pub",
        Path("/etc/edge-agent/keys/next.pub"),
    ]


def test_trust_key_alone_is_the_only_trusted_key(tmp_path: Path) -> None:
    cfg = _load(tmp_path, 'bundle = "b"\ntrust_key = "k.pub"')
    assert cfg.model.trusted_keys == [tmp_path / "machine" / "k.pub"]
    assert cfg.model.extra_trust_keys == []


def test_bundle_may_be_absent_but_trust_key_may_not(tmp_path: Path) -> None:
    cfg = _load(tmp_path, 'trust_key = "k.pub"')
    assert cfg.model.bundle is None
    with pytest.raises(ConfigErrors, match=r"model\.trust_key"):
        _load(tmp_path, 'bundle = "b"')
    with pytest.raises(ConfigErrors, match=r"model\.extra_trust_key.*did you mean"):
        _load(tmp_path, 'bundle = "b"\ntrust_key = "k.pub"\nextra_trust_key = ["x.pub"]')
