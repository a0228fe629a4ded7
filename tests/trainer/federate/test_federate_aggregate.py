"""Aggregation rules: the streaming weighted mean is exact and merges, the robust rules hold.

Pure numpy on flat update vectors (the shape a decoded delta has); the robustness cases are
the issue's: one gateway of ten sending a scaled, sign-flipped or random delta.
"""

from __future__ import annotations

import numpy as np
import pytest

from trainer.federate.aggregate import MeanAggregator
from trainer.federate.clip import NormClip, clip_to
from trainer.federate.robust import BufferedAggregator
from trainer.federate.rules import make_aggregator
from trainer.federate.settings import FederateSettings

SIZE = 5_000  # spans two coordinate blocks of the robust rules
CLIENTS = 10


def _honest(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Honest updates: a shared direction plus per-client noise of the same order."""
    common = rng.normal(0.0, 0.01, SIZE)
    return [(common + rng.normal(0.0, 0.01, SIZE)).astype(np.float32) for _ in range(n)]


def test_weighted_mean_is_exact() -> None:
    rng = np.random.default_rng(0)
    ups = _honest(rng, CLIENTS)
    samples = rng.integers(1, 5_000, CLIENTS)
    agg = MeanAggregator(SIZE)
    for u, s in zip(ups, samples, strict=True):
        agg.add(u, int(s))
    expected = np.average(np.stack(ups).astype(np.float64), axis=0, weights=samples)
    np.testing.assert_allclose(agg.result(), expected, rtol=1e-6, atol=1e-9)
    assert agg.count == CLIENTS
    assert agg.samples == int(samples.sum())


def test_merge_equals_one_aggregator_over_all() -> None:
    rng = np.random.default_rng(1)
    ups = _honest(rng, CLIENTS)
    samples = [int(s) for s in rng.integers(1, 100, CLIENTS)]
    whole, a, b = MeanAggregator(SIZE), MeanAggregator(SIZE), MeanAggregator(SIZE)
    for i, (u, s) in enumerate(zip(ups, samples, strict=True)):
        whole.add(u, s)
        (a if i % 3 else b).add(u, s)
    # b crosses a process boundary as bytes, as a second aggregator process would send it.
    a.merge(MeanAggregator.from_bytes(b.to_bytes()))
    np.testing.assert_array_equal(a.result(), whole.result())
    assert (a.count, a.samples) == (whole.count, whole.samples)

    ra, rb, rall = (BufferedAggregator(SIZE, "median") for _ in range(3))
    for i, u in enumerate(ups):
        rall.add(u, 1)
        (ra if i < 4 else rb).add(u, 1)
    ra.merge(rb)
    np.testing.assert_array_equal(ra.result(), rall.result())


def test_merge_refuses_another_rule_or_size() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        MeanAggregator(SIZE).merge(BufferedAggregator(SIZE, "median"))
    with pytest.raises(ValueError, match="cannot merge 3 parameters"):
        MeanAggregator(SIZE).merge(MeanAggregator(3))
    with pytest.raises(ValueError, match="partial sums"):
        MeanAggregator.from_bytes(b"not an npz")


def test_bad_updates_are_refused() -> None:
    agg = MeanAggregator(4)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        agg.add(np.zeros(3, np.float32), 1)
    with pytest.raises(ValueError, match="NaN"):
        agg.add(np.array([0, np.nan, 0, 0], np.float32), 1)
    with pytest.raises(ValueError, match="at least 1 sample"):
        agg.add(np.zeros(4, np.float32), 0)
    with pytest.raises(ValueError, match="no update"):
        agg.result()


def _attack(kind: str, honest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "scaled":
        return (honest * 100.0).astype(np.float32)
    if kind == "sign_flipped":
        return (-honest * 10.0).astype(np.float32)
    return rng.normal(0.0, 1.0, SIZE).astype(np.float32)


@pytest.mark.parametrize("kind", ["scaled", "sign_flipped", "random"])
def test_robust_rules_resist_one_bad_client_of_ten(kind: str) -> None:
    rng = np.random.default_rng(2)
    ups = _honest(rng, CLIENTS)
    clean = np.mean(np.stack(ups[1:]), axis=0)
    ups[0] = _attack(kind, ups[0], rng)
    clean_norm = float(np.linalg.norm(clean))

    def run(rule: str, **extra: float) -> float:
        agg = make_aggregator(FederateSettings(round_id="r1", rule=rule, **extra), SIZE)  # type: ignore[arg-type]
        for u in ups:
            agg.add(u, 100)
        return float(np.linalg.norm(agg.result() - clean)) / clean_norm

    fedavg = run("fedavg")
    median = run("median")
    trimmed = run("trimmed_mean", trim_fraction=0.1)
    # The coordinate-wise rules stay within about one honest client's noise of the clean mean;
    # the plain mean is dragged by the attacker's whole (weighted) update.
    assert median < 0.5, median
    assert trimmed < 0.5, trimmed
    assert fedavg > 3 * max(median, trimmed), (fedavg, median, trimmed)


def test_trimmed_mean_drops_the_extremes_of_each_coordinate() -> None:
    agg = BufferedAggregator(2, "trimmed_mean", trim_fraction=0.2)
    for row in ([0.0, 5.0], [1.0, -100.0], [2.0, 6.0], [3.0, 7.0], [1000.0, 8.0]):
        agg.add(np.array(row, np.float32), 1)
    assert agg.trimmed == 1
    np.testing.assert_allclose(agg.result(), [2.0, 6.0])


def test_clipping_bounds_one_clients_influence() -> None:
    rng = np.random.default_rng(3)
    ups = _honest(rng, CLIENTS)
    clean = np.mean(np.stack(ups[1:]), axis=0)
    ups[0] = (ups[0] * 1000.0).astype(np.float32)
    clip = NormClip(multiple=3.0)
    for u in ups:
        clip.observe(float(np.linalg.norm(u)))
    bound = clip.bound()
    assert bound is not None
    unclipped, clipped = MeanAggregator(SIZE), MeanAggregator(SIZE)
    for u in ups:
        unclipped.add(u, 1)
        c = clip.clip(u)
        assert np.linalg.norm(c.vector) <= bound * (1 + 1e-6)
        clipped.add(c.vector, 1)
    # With clipping the attacker moves the mean by at most bound / K.
    shift = float(np.linalg.norm(clipped.result() - clean))
    assert shift <= bound / CLIENTS + float(np.linalg.norm(ups[1] - clean)) / CLIENTS + 1e-6
    assert float(np.linalg.norm(unclipped.result() - clean)) > 10 * shift


def test_clip_modes() -> None:
    v = np.array([3.0, 4.0], np.float32)
    assert clip_to(v, None).scale == 1.0
    c = clip_to(v, 1.0)
    assert c.norm == pytest.approx(5.0)
    assert float(np.linalg.norm(c.vector)) == pytest.approx(1.0)
    assert NormClip.from_settings(FederateSettings(round_id="r", clip_norm=2.0)).bound() == 2.0
    assert NormClip.from_settings(FederateSettings(round_id="r")).bound() is None  # none seen
    off = NormClip.from_settings(FederateSettings(round_id="r", clip_multiple=None))
    off.observe(1.0)
    assert off.mode == "off"
    assert off.bound() is None
    with pytest.raises(ValueError, match="finite"):
        off.observe(float("inf"))
