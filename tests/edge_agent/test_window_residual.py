"""The screen's window residual: fitted on normal windows, it lets them through and sends on a
window of another shape; the forest file carries it, and malformed arrays are refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge_agent.detect.forest import FlatForest
from edge_agent.detect.residual import WindowResidual
from edge_agent.detect.windows import window_features
from edge_agent.errors import BundleError
from trainer.forest import fit_forest, fit_window_residual

W, C = 16, 3


def sine_windows(n: int, seed: int) -> np.ndarray:
    """Normal windows: three channels following one phase-shifted sine, plus a little noise."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    t = np.arange(W)[None, :, None] * 0.4
    lag = np.arange(C)[None, None, :] * 0.7
    noise = rng.normal(0, 0.05, size=(n, W, C))
    return (np.sin(t + phase + lag) + noise).astype(np.float32)


@pytest.fixture(scope="module")
def residual() -> WindowResidual:
    return fit_window_residual(sine_windows(4000, 0), explained=0.95, quantile=0.98)


def test_normal_windows_pass_and_a_broken_shape_goes_on(residual: WindowResidual) -> None:
    assert 0 < residual.components.shape[0] < W * C
    fresh = sine_windows(2000, 1)
    share = float(np.mean(residual.exceedance(fresh) > 0))
    assert share < 0.05  # about 1 - quantile of fresh normal windows exceed the limit
    broken = fresh[:200].copy()
    broken[:, W // 2 :, 1] = broken[:, W // 2, 1:2]  # channel 1 stuck for half the window
    assert np.mean(residual.exceedance(broken) > 0) > 0.9
    spike = fresh[:200].copy()
    spike[:, -1, 2] += 2.0  # one sample, well within the channel's range
    assert np.mean(residual.exceedance(spike) > 0) > 0.9


def test_spe_is_the_mean_squared_residual_off_the_subspace(residual: WindowResidual) -> None:
    assert not residual.complement  # 95 % of the variance: a few of 48 dimensions
    w = sine_windows(5, 2)
    z = w.reshape(5, -1).astype(np.float64) - residual.mean
    p = residual.components
    np.testing.assert_allclose(residual.spe(w), ((z - z @ p.T @ p) ** 2).mean(axis=1))
    with pytest.raises(ValueError, match="windows of 32 values"):
        residual.spe(np.zeros((1, W, 2), np.float32))


def test_a_wide_subspace_is_judged_by_its_smaller_complement_with_the_same_spe() -> None:
    wide = fit_window_residual(sine_windows(4000, 0), explained=0.9999, quantile=0.98)
    assert wide.complement
    assert wide.components.shape[0] < W * C // 2
    # The subspace itself: the orthonormal complement of the stored basis.
    _, _, vt = np.linalg.svd(wide.components, full_matrices=True)
    subspace = dataclasses.replace(
        wide, components=vt[wide.components.shape[0] :], complement=False
    )
    w = sine_windows(300, 4)
    w[:50, 5:, 1] += 1.5  # some windows well off the subspace
    np.testing.assert_allclose(wide.spe(w), subspace.spe(w), rtol=1e-9, atol=1e-12)
    again = WindowResidual.from_arrays(wide.arrays())
    assert again.complement
    assert np.array_equal(again.spe(w), wide.spe(w))


def test_the_forest_file_carries_it_and_refuses_bad_arrays(residual: WindowResidual) -> None:
    windows = sine_windows(600, 3)
    ends = np.arange(W - 1, W * 600, W)
    feats = window_features(windows.reshape(-1, C), ends, W)
    _, forest = fit_forest(feats, n_trees=20, max_samples=64, seed=1)
    forest = dataclasses.replace(forest, residual=residual)
    again = FlatForest.from_bytes(forest.to_bytes())
    assert again.residual is not None
    np.testing.assert_array_equal(
        again.screen_score(feats, windows), forest.screen_score(feats, windows)
    )
    with pytest.raises(ValueError, match="pass them"):
        forest.screen_score(feats)
    for bad, why in (
        (dataclasses.replace(residual, limit=0.0), "not a positive number"),
        (dataclasses.replace(residual, components=residual.components[:, :5]), "components of 5"),
        (dataclasses.replace(residual, mean=residual.mean * np.nan), "non-finite"),
        (dataclasses.replace(residual, complement=1), "not one boolean"),  # type: ignore[arg-type]
    ):
        forged = dataclasses.replace(forest, residual=bad)
        with pytest.raises(BundleError, match=why):
            FlatForest.from_bytes(forged.to_bytes(), source="forest.npz")


def test_pipeline_windows_are_read_in_place_with_the_same_result(
    residual: WindowResidual,
) -> None:
    """A pipeline's windows (a WindowSource over consecutive points, never gathered whole)
    give the same SPE as the gathered windows, across several blocks."""
    from edge_agent.detect.residual import BLOCK
    from edge_agent.detect.ring import WindowSource

    points = np.concatenate([sine_windows(1, s)[0] for s in range(200)])  # (3200, C)
    ends = np.arange(W - 1, points.shape[0], 2)  # hop 2: more windows than one block
    assert ends.size > 2 * BLOCK
    source = WindowSource(points, ends, W)
    gathered = source[np.arange(ends.size)]
    np.testing.assert_allclose(residual.spe(source), residual.spe(gathered), rtol=1e-12)
    view, starts = source.rows()
    assert not view.flags.writeable
    np.testing.assert_array_equal(view[starts[3]].reshape(W, C), gathered[3])


def test_the_limit_is_set_on_held_out_windows_the_subspace_did_not_fit() -> None:
    # Few windows for many dimensions: the subspace fits its own windows' noise too, so their
    # SPE understates what a later normal window shows; held-out windows do not.
    train, later = sine_windows(60, 5), sine_windows(3000, 6)
    own = fit_window_residual(train, explained=0.995, quantile=0.98)
    held = fit_window_residual(train, explained=0.995, quantile=0.98, held_out=later[:1000])
    np.testing.assert_array_equal(held.components, own.components)
    assert held.limit == pytest.approx(float(np.quantile(own.spe(later[:1000]), 0.98)))
    fresh = later[1000:]
    # 2 % of fresh normal windows should exceed a 98 % limit: the in-sample one sends 11 %.
    assert np.mean(own.exceedance(fresh) > 0) > 0.08
    assert np.mean(held.exceedance(fresh) > 0) < 0.04


def test_a_raised_limit_is_that_many_times_higher(residual: WindowResidual) -> None:
    high = residual.widened(2.25)
    assert high.limit == pytest.approx(2.25 * residual.limit)
    np.testing.assert_array_equal(high.components, residual.components)
    w = sine_windows(300, 7)
    np.testing.assert_allclose(high.exceedance(w), residual.spe(w) / (2.25 * residual.limit) - 1)
    with pytest.raises(ValueError, match="at least 1"):
        residual.widened(0.9)
