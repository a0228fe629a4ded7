"""Error feedback and the on-disk residual (edge_agent.learn.residual), on a real state dir."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from edge_agent.learn.residual import RESIDUAL_MODE, ResidualStore, error_feedback
from edge_agent.learn.weights import WeightSet

SHAPES = ((160, 32), (32,), (32, 160), (160,))
FRACTION = 0.02
ROUNDS = 12


def weights(seed: int, shapes: tuple[tuple[int, ...], ...] = SHAPES) -> WeightSet:
    rng = np.random.default_rng(seed)
    kinds = ("kernel", "bias")
    names = tuple(f"dense_{i // 2}/{kinds[i % 2]}" for i in range(len(shapes)))
    return WeightSet(names, tuple(rng.normal(0, 0.1, s) for s in shapes))


def sizes(w: WeightSet) -> tuple[int, ...]:
    return tuple(int(a.size) for a in w.arrays)


@pytest.fixture
def base() -> WeightSet:
    return weights(0)


def test_nothing_is_lost_over_rounds(base: WeightSet) -> None:
    """Sum of everything sent plus the last residual is the sum of every round's update."""
    rng = np.random.default_rng(1)
    residual = None
    sent_total = np.zeros(base.size, dtype=np.float64)
    update_total = np.zeros(base.size, dtype=np.float64)
    for _ in range(ROUNDS):
        update = rng.normal(0, 1e-3, base.size).astype(np.float32)
        step = error_feedback(update, residual, sizes(base), FRACTION)
        sent_total += step.sparse.dense()
        update_total += update
        residual = step.residual
    assert residual is not None
    assert np.allclose(sent_total + residual, update_total, rtol=0, atol=1e-6)


def test_a_large_entry_left_out_is_sent_later(base: WeightSet) -> None:
    update = np.zeros(base.size, dtype=np.float32)
    k = int(np.ceil(FRACTION * base.size))
    update[:k] = 1.0  # exactly fills round one
    update[k] = 0.5  # left out in round one
    first = error_feedback(update, None, sizes(base), FRACTION)
    assert first.residual[k] == 0.5
    second = error_feedback(np.zeros_like(update), first.residual, sizes(base), FRACTION)
    assert k in second.sparse.indices
    assert second.sparse.dense()[k] == pytest.approx(0.5, rel=1 / 127)


def test_store_round_trip_and_mode(tmp_path: Path, base: WeightSet) -> None:
    store = ResidualStore(tmp_path)
    assert np.array_equal(store.load(base), np.zeros(base.size, np.float32))  # none yet
    residual = np.random.default_rng(2).normal(0, 1e-3, base.size).astype(np.float32)
    store.save(base, residual)
    assert np.array_equal(store.load(base), residual)
    assert stat.S_IMODE(store.path.stat().st_mode) == RESIDUAL_MODE
    assert [p.name for p in store.dir.iterdir()] == ["residual.npz"]  # no temporary left
    store.clear()
    assert not store.path.exists()
    store.clear()  # twice is fine


def test_next_global_model_of_the_same_layout_keeps_it(tmp_path: Path, base: WeightSet) -> None:
    store = ResidualStore(tmp_path)
    residual = np.full(base.size, 1e-3, dtype=np.float32)
    store.save(base, residual)
    next_round = base.add(weights(5))  # the aggregated model: same tensors, new values
    assert np.array_equal(store.load(next_round), residual)


def test_another_layout_starts_from_zero(tmp_path: Path, base: WeightSet) -> None:
    store = ResidualStore(tmp_path)
    store.save(base, np.ones(base.size, dtype=np.float32))
    wider = weights(0, ((160, 48), (48,), (48, 160), (160,)))
    assert not store.load(wider).any()
    renamed = WeightSet(tuple(f"x{i}" for i in range(4)), base.arrays)
    assert not store.load(renamed).any()


def test_damaged_or_linked_file_starts_from_zero(
    tmp_path: Path, base: WeightSet, caplog: pytest.LogCaptureFixture
) -> None:
    store = ResidualStore(tmp_path)
    store.save(base, np.ones(base.size, dtype=np.float32))
    good = store.path.read_bytes()
    store.path.write_bytes(good[: len(good) // 2])  # cut mid-write by something else
    with caplog.at_level(logging.WARNING, logger="edge_agent.learn"):
        assert not store.load(base).any()
    assert "damaged" in caplog.text

    elsewhere = tmp_path / "elsewhere.npz"
    elsewhere.write_bytes(good)
    store.path.unlink()
    os.symlink(elsewhere, store.path)
    assert not store.load(base).any()  # a link in its place is not followed


def test_non_finite_residual_is_dropped(tmp_path: Path, base: WeightSet) -> None:
    store = ResidualStore(tmp_path)
    bad = np.zeros(base.size, dtype=np.float32)
    bad[3] = np.inf
    store.save(base, bad)
    assert not store.load(base).any()


def test_bad_shapes_are_errors(tmp_path: Path, base: WeightSet) -> None:
    store = ResidualStore(tmp_path)
    with pytest.raises(ValueError, match="residual of shape"):
        store.save(base, np.zeros(base.size + 1, dtype=np.float32))
    with pytest.raises(ValueError, match="residual of shape"):
        error_feedback(np.zeros(base.size), np.zeros(3), sizes(base), FRACTION)
    with pytest.raises(ValueError, match="fraction"):
        error_feedback(np.zeros(base.size), None, sizes(base), 0.0)
    nan = np.zeros(base.size)
    nan[7] = np.nan
    with pytest.raises(ValueError, match="position 7"):
        error_feedback(nan, None, sizes(base), FRACTION)
