"""Window kernels against a plain numpy reference."""

from __future__ import annotations

import numpy as np

from edge_agent.detect.windows import (
    FEATURES_PER_CHANNEL,
    gather_windows,
    window_ends,
    window_features,
)


def test_features_match_numpy_reference() -> None:
    rng = np.random.default_rng(1)
    xn = rng.normal(size=(100, 3)).astype(np.float32)
    w = 16
    ends = np.array([15, 40, 99], dtype=np.int64)
    f = window_features(xn, ends, w)
    assert f.shape == (3, 3 * FEATURES_PER_CHANNEL)
    for i, k in enumerate(ends):
        win = xn[k - w + 1 : k + 1].astype(np.float64)
        for j in range(3):
            c = win[:, j]
            ref = [
                c.mean(),
                c.std(),
                c.min(),
                c.max(),
                c[-1] - c[0],
                np.abs(np.diff(c)).mean(),
                c[-4:].mean() - c[:-4].mean(),
            ]
            np.testing.assert_allclose(f[i, j * 7 : j * 7 + 7], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(gather_windows(xn, ends, w)[1], xn[25:41])


def test_window_ends_respect_segments_hop_and_imputation() -> None:
    seg = np.array([0] * 10 + [10] * 6, dtype=np.int64)
    imputed = np.zeros((16, 2), dtype=np.bool_)
    imputed[7, :] = True
    ends = window_ends(seg, imputed, 4, 1, 0.0)
    # Windows containing point 7 are dropped; none straddles the segment start at 10.
    assert ends.tolist() == [3, 4, 5, 6, 13, 14, 15]
    assert window_ends(seg, imputed, 4, 2, 1.0).tolist() == [3, 5, 7, 9, 13, 15]
