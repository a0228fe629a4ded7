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


def _sequential_features(win: np.ndarray) -> list[float]:
    """One channel's features summed one step at a time in float64, in time order: the
    numbers the trainer fitted the forest on, to the last bit."""
    w = win.shape[0]
    recent = max(1, int(w * 0.25))
    s = s2 = steps = s_recent = 0.0
    lo, hi = np.inf, -np.inf
    for t, v32 in enumerate(win.tolist()):
        v = float(v32)
        s += v
        s2 += v * v
        lo = min(lo, v)
        hi = max(hi, v)
        if t > 0:
            steps += abs(v - float(win[t - 1]))
        if t > w - 1 - recent:
            s_recent += v
    mean = s / w
    older = w - recent
    mean_old = (s - s_recent) / older if older > 0 else mean
    return [mean, np.sqrt(max(s2 / w - mean * mean, 0.0)), lo, hi,
            float(win[-1]) - float(win[0]), steps / max(w - 1, 1),
            s_recent / recent - mean_old]  # fmt: skip


def test_features_bit_for_bit_with_sequential_sums() -> None:
    rng = np.random.default_rng(2)
    xn = (rng.normal(size=(60, 2)) * 10.0 ** rng.integers(-6, 6, size=(60, 2))).astype(np.float32)
    xn[7, 0], xn[20, 1], xn[33, 0], xn[40:44, 1] = -0.0, np.inf, -np.inf, 0.0
    for w in (1, 2, 3, 4, 5, 10, 32):
        ends = np.arange(w - 1, xn.shape[0], dtype=np.int64)
        got = window_features(xn, ends, w)
        for i, k in enumerate(ends.tolist()):
            for j in range(2):
                want = np.array(_sequential_features(xn[k - w + 1 : k + 1, j]), np.float32)
                cell = got[i, j * FEATURES_PER_CHANNEL : (j + 1) * FEATURES_PER_CHANNEL]
                assert cell.tobytes() == want.tobytes(), (w, k, j, cell, want)


def test_window_ends_respect_segments_hop_and_imputation() -> None:
    seg = np.array([0] * 10 + [10] * 6, dtype=np.int64)
    imputed = np.zeros((16, 2), dtype=np.bool_)
    imputed[7, :] = True
    ends = window_ends(seg, imputed, 4, 1, 0.0)
    # Windows containing point 7 are dropped; none straddles the segment start at 10.
    assert ends.tolist() == [3, 4, 5, 6, 13, 14, 15]
    assert window_ends(seg, imputed, 4, 2, 1.0).tolist() == [3, 5, 7, 9, 13, 15]
