"""trainer.fit: the autoencoder's second pass, weighted towards rare normal windows; the
screen's limits and the headroom a short history gives them."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from edge_agent.detect.windows import window_features
from trainer.config import AutoencoderConfig, TrainConfig
from trainer.fit import (
    KerasReconstructor,
    rare_window_weights,
    screen_headroom,
    screen_limits,
    train_autoencoder,
)
from trainer.forest import fit_forest

F32 = npt.NDArray[np.float32]
BOOL = npt.NDArray[np.bool_]


def test_weights_follow_the_error_over_the_median_and_average_one() -> None:
    windows = np.zeros((100, 4, 2), np.float32)
    recon = np.full_like(windows, 0.1)  # every window: squared error 0.01
    recon[:3] = 0.3  # three windows 9x worse
    recon[3] = 0.05  # one better than the median: still weighs as much as the ordinary ones
    w = rare_window_weights(windows, recon)
    assert w.mean() == pytest.approx(1.0)
    assert w[0] == w[1] == w[2] == pytest.approx(9 * w[4])
    assert w[3] == w[4] == w[99]


def _machine(rng: np.random.Generator, n: int, rare_every: int) -> tuple[F32, BOOL]:
    """Windows of two noisy channels at a steady level; every ``rare_every``-th window holds a
    stop (both channels step to 0 at a random sample), as a compressor's history does."""
    steps, channels = 16, 2
    x = 1.0 + 0.05 * rng.standard_normal((n, steps, channels))
    rare = np.arange(n) % rare_every == 0
    for i in np.flatnonzero(rare):
        x[i, rng.integers(2, steps - 2) :, :] = 0.05 * rng.standard_normal(channels)
    return x.astype(np.float32), rare


def _rare_over_common(cfg: TrainConfig, train: F32, test: F32, rare: BOOL) -> float:
    model, info = train_autoencoder(train, train[:200], cfg, seed=0)
    assert info["rare_window_epochs_run"] == cfg.autoencoder.rare_pass_epochs()
    recon = KerasReconstructor(model).reconstruct(test)
    err = np.square(test - recon).mean(axis=(1, 2))
    return float(err[rare].mean() / err[~rare].mean())


def test_the_second_pass_learns_the_rare_windows() -> None:
    """Stops in 3 % of the windows: a plain pass leaves their error far above the ordinary
    windows'; the same number of epochs with the second pass brings it closer (8.4x and
    5.2x the ordinary windows' error here; without the weights the two runs are the same)."""
    rng = np.random.default_rng(0)
    train, _ = _machine(rng, 3000, rare_every=33)
    test, rare = _machine(rng, 2000, rare_every=33)

    def cfg(epochs: int, rare_epochs: int) -> TrainConfig:
        ae = AutoencoderConfig(
            epochs=epochs, rare_window_epochs=rare_epochs, patience=50, quantization_aware_epochs=0
        )
        return TrainConfig(autoencoder=ae)

    plain = _rare_over_common(cfg(12, 0), train, test, rare)
    weighted = _rare_over_common(cfg(6, 6), train, test, rare)
    assert weighted < 0.85 * plain, (plain, weighted)


def test_the_second_pass_defaults_to_half_the_epochs() -> None:
    assert AutoencoderConfig(epochs=80).rare_pass_epochs() == 40
    assert AutoencoderConfig(epochs=80, rare_window_epochs=0).rare_pass_epochs() == 0
    with pytest.raises(ValueError, match="rare_window_epochs"):
        AutoencoderConfig(rare_window_epochs=-1)


@pytest.mark.parametrize(
    ("history", "follow", "factor"),
    [(400, True, 2.25), (2_000, True, 1.3125), (100_000, True, 1.000125), (400, False, 1.0)],
)
def test_screen_limits_get_the_thresholds_headroom_for_the_history(
    history: int, follow: bool, factor: float
) -> None:
    rng = np.random.default_rng(0)
    train_w, _ = _machine(rng, 300, rare_every=10**9)
    val_w, _ = _machine(rng, 80, rare_every=10**9)
    steps, channels = train_w.shape[1:]
    feats = window_features(
        train_w.reshape(-1, channels), np.arange(steps - 1, steps * 300, steps), steps
    )
    _, forest = fit_forest(feats, n_trees=10, max_samples=64, seed=0, envelope=True)
    cfg = TrainConfig.model_validate({"forest": {"limits_follow_margin": follow}})
    # The threshold's full margin on a short history; fading faster than it on a long one.
    margin = cfg.threshold.effective_margin(history)
    assert factor == pytest.approx(screen_headroom(cfg.threshold, history) if follow else 1.0)
    assert factor <= margin
    got = screen_limits(forest, train_w, val_w, cfg, history)
    assert forest.envelope is not None
    assert got.envelope is not None
    np.testing.assert_allclose(
        got.envelope.hi - got.envelope.mid, factor * (forest.envelope.hi - forest.envelope.mid)
    )
    np.testing.assert_allclose(
        got.envelope.mid - got.envelope.lo, factor * (forest.envelope.mid - forest.envelope.lo)
    )
    assert got.residual is not None
    # The limit is the held-out windows' quantile of their residual, with the same headroom.
    held = float(np.quantile(got.residual.spe(val_w), cfg.forest.residual_quantile))
    assert got.residual.limit == pytest.approx(factor * held)
