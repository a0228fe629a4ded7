"""SPE and T² features against numpy, and their round trip through the forest file."""

from __future__ import annotations

import numpy as np

from edge_agent.detect.forest import FlatForest
from edge_agent.detect.projection import fit_projection, window_stat_features
from edge_agent.detect.windows import screen_features
from trainer.forest import fit_forest


def test_stats_match_numpy_and_catch_a_broken_correlation() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 1))
    x = np.hstack([z, z + 0.05 * rng.normal(size=(4000, 1)), rng.normal(size=(4000, 1))])
    proj = fit_projection(x.astype(np.float32))
    assert proj.components.shape == (3, 2)
    xs = x[:50].astype(np.float32)
    stats = proj.sample_stats(xs)
    p = proj.components
    scores = xs.astype(np.float64) @ p
    spe = ((xs - scores @ p.T) ** 2).sum(axis=1)
    t2 = (scores**2 / proj.variances).sum(axis=1)
    np.testing.assert_allclose(stats[:, 0], spe, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats[:, 1], t2, rtol=1e-4, atol=1e-5)
    # Channels 0 and 1 move together in normal data; pulling them apart is off the subspace.
    broken = np.array([[2.0, -2.0, 0.0]], np.float32)
    assert proj.sample_stats(broken)[0, 0] > 50 * np.median(proj.sample_stats(xs)[:, 0])
    f = window_stat_features(stats, np.array([9, 49]), 10)
    np.testing.assert_allclose(
        f[0], [spe[:10].mean(), spe[:10].max(), t2[:10].mean(), t2[:10].max()], rtol=1e-4
    )


def test_projection_travels_with_the_forest() -> None:
    rng = np.random.default_rng(1)
    xn = rng.normal(size=(600, 3)).astype(np.float32)
    proj = fit_projection(xn)
    ends = np.arange(15, 600, dtype=np.int64)
    feats = screen_features(xn, proj.sample_stats(xn), ends, 16)
    assert feats.shape == (ends.size, 3 * 7 + 4)
    _, forest = fit_forest(feats, n_trees=20, max_samples=64, seed=0, projection=proj)
    again = FlatForest.from_bytes(forest.to_bytes())
    assert again.projection is not None
    np.testing.assert_array_equal(again.projection.components, proj.components)
    np.testing.assert_array_equal(again.sample_stats(xn), forest.sample_stats(xn))
