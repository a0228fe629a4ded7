"""The canary on real bundles and real plant rows: a sound candidate passes with its figures,
one that alerts on everything or is too slow is refused, one that cannot load never gets there,
and without a running model or history only loading and running is checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config.model import EventsConfig
from edge_agent.errors import BundleError
from edge_agent.model_slot import ModelSlot
from edge_agent.ota.canary import History, judge
from edge_agent.ota.config import OtaConfig


def load(bundle: Path, keys: Path) -> ModelSlot:
    slot = ModelSlot.open(bundle, [keys / "signing.pub"], machine_id="m", events=EventsConfig())
    slot.warm_up()
    return slot


def test_a_sound_candidate_passes_and_its_figures_are_kept(
    bundle: Path, keys: Path, variants: dict[str, Path], history: History
) -> None:
    v = judge(load(variants["newer"], keys), load(bundle, keys), history, OtaConfig())
    assert v.passed, v.reason
    f = v.figures
    assert f["mode"] == "scored"
    assert f["rows"] == history.ts.shape[0]
    assert isinstance(f["windows"], int)
    assert f["windows"] > 0
    assert f["alert_share"] == f["active_alert_share"]  # the same model on the same rows
    assert isinstance(f["p99_ms"], float)
    assert f["p99_ms"] > 0


def test_a_model_that_alerts_on_everything_is_refused(
    bundle: Path, keys: Path, variants: dict[str, Path], history: History
) -> None:
    v = judge(load(variants["alerting"], keys), load(bundle, keys), history, OtaConfig())
    assert not v.passed
    assert v.reason is not None
    assert v.reason.startswith("canary: alerts on")
    assert isinstance(v.figures["alert_share"], float)
    assert v.figures["alert_share"] > 0.5
    assert v.figures["alert_share_bound"] == OtaConfig().canary_alert_floor


def test_a_model_over_the_latency_budget_is_refused(
    bundle: Path, keys: Path, variants: dict[str, Path], history: History
) -> None:
    cfg = OtaConfig(canary_latency_ms=1e-6)
    v = judge(load(variants["newer"], keys), load(bundle, keys), history, cfg)
    assert not v.passed
    assert v.reason is not None
    assert "over the 1e-06 ms budget" in v.reason


def test_a_model_whose_file_is_not_a_model_fails_to_load(
    keys: Path, variants: dict[str, Path]
) -> None:
    # Signed, every hash matches: only loading it shows it is no model.
    with pytest.raises((BundleError, ValueError, RuntimeError)):
        load(variants["corrupt"], keys)


@pytest.mark.parametrize("why", ["no running model", "canary_s = 0", "no live rows yet"])
def test_without_a_comparison_only_loading_and_running_count(
    bundle: Path, keys: Path, variants: dict[str, Path], history: History, why: str
) -> None:
    active = None if why == "no running model" else load(bundle, keys)
    rows = None if why == "no live rows yet" else history
    cfg = OtaConfig(canary_s=0) if why == "canary_s = 0" else OtaConfig()
    v = judge(load(variants["alerting"], keys), active, rows, cfg)
    assert v.passed
    assert v.figures["mode"] == "load_only"
    assert v.figures["note"] == why
