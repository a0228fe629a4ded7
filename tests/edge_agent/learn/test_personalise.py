"""Personalisation: the local threshold rule, its bounds, the fallbacks, the stored results and
their application to a real model slot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bundles import resigned_copy
from learn_support import open_slot

from edge_agent.bundle.manifest import Manifest
from edge_agent.bundle.verify import verify_bundle
from edge_agent.data.table import SensorTable
from edge_agent.detect.cascade import reconstruction_error
from edge_agent.learn.history import history_windows
from edge_agent.learn.personalise import (
    MAX_KEPT,
    THRESHOLDS_FILE,
    LocalThreshold,
    Personaliser,
    ThresholdStore,
    calibrate,
)
from edge_agent.model_slot import ModelSlot
from edge_agent.simulator import MachineProfile, simulate_plant

QUANTILE = 0.95
MIN_WINDOWS = 50


@pytest.fixture(scope="module")
def slot(bundle: Path, keys: Path) -> ModelSlot:
    return open_slot(bundle, keys)


def windows_of(manifest: Manifest, noise: float, rows: int = 1500) -> np.ndarray:
    plant = simulate_plant(rows=rows, seed=5, anomaly_fraction=0.0,
                           profile=MachineProfile(noise_scale=noise))
    table = SensorTable("local", plant.timestamps, plant.values, plant.channels)
    return history_windows(table.select(manifest.channel_names), manifest, hop=1)[0]


def test_the_scale_is_the_quantile_ratio_within_the_signed_bounds(slot: ModelSlot) -> None:
    m = slot.manifest
    assert m.learning is not None
    x = windows_of(m, noise=1.2)
    t = m.threshold
    errors, _ = reconstruction_error(x, slot.cascade.autoencoder.reconstruct(x), t.statistic)
    raw = np.quantile(errors, QUANTILE) / np.interp(QUANTILE, t.quantile_levels,
                                                    t.quantile_values)
    r = calibrate(m, slot.cascade.autoencoder, x, quantile=QUANTILE, min_windows=MIN_WINDOWS)
    assert r.source == "local"
    assert r.raw_scale == pytest.approx(raw)
    lo, hi = m.learning.threshold_scale_min, m.learning.threshold_scale_max
    assert r.scale == pytest.approx(min(max(raw, lo), hi))
    assert r.alert_threshold == pytest.approx(t.alert_threshold * r.scale)
    # A far noisier machine hits the upper bound; a quiet one a tighter signed lower bound.
    tight = m.model_copy(update={"learning": m.learning.model_copy(
        update={"threshold_scale_min": 0.95})})
    for manifest, noise, bound in ((m, 6.0, hi), (tight, 0.1, 0.95)):
        far = calibrate(manifest, slot.cascade.autoencoder, windows_of(m, noise),
                        quantile=QUANTILE, min_windows=MIN_WINDOWS)
        assert far.scale == bound
        assert "clamped" in far.reason
        assert far.raw_scale is not None
        assert abs(far.raw_scale - 1) > abs(bound - 1)


def test_too_few_windows_or_no_signed_bounds_keep_the_manifests_threshold(
    slot: ModelSlot, bundle: Path, keys: Path, tmp_path: Path
) -> None:
    m = slot.manifest
    x = windows_of(m, noise=3.0)
    few = calibrate(m, slot.cascade.autoencoder, x[:10], quantile=QUANTILE,
                    min_windows=MIN_WINDOWS)
    assert (few.source, few.scale, few.alert_threshold) == (
        "manifest", 1.0, m.threshold.alert_threshold)
    assert "10 buffered normal windows, fewer than 50" in few.reason
    old = verify_bundle(resigned_copy(bundle, tmp_path / "old", keys / "signing.key",
                                      {"learning": None}), keys / "signing.pub").manifest
    unsigned = calibrate(old, slot.cascade.autoencoder, x, quantile=QUANTILE,
                         min_windows=MIN_WINDOWS)
    assert unsigned.source == "manifest"
    assert "no learning section" in unsigned.reason


@pytest.mark.parametrize("statistic", ["mean", "channel_max"])
def test_a_scaled_threshold_keeps_p_anomaly_consistent(slot: ModelSlot, statistic: str) -> None:
    t = slot.manifest.threshold.model_copy(update={"statistic": statistic})
    s = 1.3
    mine = t.scaled(s)
    e = np.linspace(0.0, 4 * t.alert_threshold, 41)
    np.testing.assert_allclose(mine.p_anomaly(e * s), t.p_anomaly(e), rtol=1e-9, atol=1e-12)
    assert mine.alert_threshold == pytest.approx(s * t.alert_threshold)
    # A personal threshold stays in the error its bundle was calibrated on (a copy that fell
    # back to the default statistic would judge channel_max errors by a mean's threshold).
    assert mine.statistic == statistic


def test_results_are_stored_per_version_and_a_damaged_file_is_survived(tmp_path: Path) -> None:
    store = ThresholdStore(tmp_path / "learn")
    assert store.get("v1") is None
    for i in range(MAX_KEPT + 2):
        store.put(LocalThreshold(f"v{i}", "local", 1.1, 1.1, 99, 0.2, "why"))
    assert store.get("v0") is None  # the oldest went
    assert store.get(f"v{MAX_KEPT + 1}") == LocalThreshold(
        f"v{MAX_KEPT + 1}", "local", 1.1, 1.1, 99, 0.2, "why")
    (tmp_path / "learn" / THRESHOLDS_FILE).write_text(json.dumps({"v9": {"scale": "x"}}))
    assert store.get("v9") is None
    (tmp_path / "learn" / THRESHOLDS_FILE).write_text("{not json")
    assert store.get("v9") is None
    store.put(LocalThreshold("v9", "manifest", 1.0, None, 3, 0.1, "few"))
    assert store.get("v9") is not None


def test_the_personaliser_calibrates_a_candidate_and_applies_stored_thresholds(
    bundle: Path, keys: Path, tmp_path: Path
) -> None:
    candidate = open_slot(bundle, keys)
    m = candidate.manifest
    x = windows_of(m, noise=2.5)
    scales: list[float] = []
    p = Personaliser(ThresholdStore(tmp_path), lambda _m: x, quantile=QUANTILE,
                     min_windows=MIN_WINDOWS, on_apply=scales.append)
    figures = p.calibrate(candidate)
    assert figures["threshold_source"] == "local"
    scale = float(figures["threshold_scale"])  # type: ignore[arg-type]
    assert candidate.cascade.threshold.alert_threshold == pytest.approx(
        m.threshold.alert_threshold * scale, rel=1e-5)
    assert scales == []  # a candidate is not the running model yet
    later = open_slot(bundle, keys)  # the same model loaded again (restart, rollback)
    assert later.cascade.threshold.alert_threshold == m.threshold.alert_threshold
    p.apply(later, running=True)
    assert later.cascade.threshold == candidate.cascade.threshold
    assert scales == [pytest.approx(scale, rel=1e-5)]
    broken = Personaliser(ThresholdStore(tmp_path / "b"), lambda _m: x[:, :, :2],
                          quantile=QUANTILE, min_windows=MIN_WINDOWS, on_apply=scales.append)
    other = open_slot(bundle, keys)
    assert broken.calibrate(other)["threshold_source"] == "manifest"  # never raises
    assert other.cascade.threshold.alert_threshold == m.threshold.alert_threshold
