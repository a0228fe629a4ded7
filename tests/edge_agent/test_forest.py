"""The flat forest scores exactly like scikit-learn and refuses malformed arrays."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.detect.forest import FlatForest
from edge_agent.errors import BundleError
from trainer.forest import fit_forest


@pytest.fixture(scope="module")
def fitted() -> tuple[object, FlatForest, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 12)).astype(np.float32)
    model, flat = fit_forest(x, n_trees=50, max_samples=128, seed=3)
    test = (rng.normal(size=(500, 12)) * 2).astype(np.float32)
    return model, flat, test


def test_scores_equal_sklearn(fitted: tuple[object, FlatForest, np.ndarray]) -> None:
    model, flat, test = fitted
    ref = -model.score_samples(test)  # type: ignore[attr-defined]
    np.testing.assert_allclose(flat.score(test), ref, rtol=0, atol=1e-12)


def test_round_trip_without_pickle(fitted: tuple[object, FlatForest, np.ndarray]) -> None:
    _, flat, test = fitted
    again = FlatForest.from_bytes(flat.to_bytes())
    np.testing.assert_array_equal(again.score(test), flat.score(test))


def test_malformed_forest_is_refused(fitted: tuple[object, FlatForest, np.ndarray]) -> None:
    _, flat, _ = fitted
    left = flat.left.copy()
    left[flat.roots[0]] = flat.roots[0]  # a node that points at itself would loop forever
    bad = FlatForest(
        flat.feature,
        flat.threshold,
        left,
        flat.right,
        flat.leaf_value,
        flat.roots,
        flat.max_samples,
        flat.n_features,
    )
    with pytest.raises(BundleError, match="invalid child"):
        FlatForest.from_bytes(bad.to_bytes())
    with pytest.raises(BundleError, match="not a valid flat forest"):
        FlatForest.from_bytes(b"not an npz")


def test_wrong_feature_count_is_an_error(fitted: tuple[object, FlatForest, np.ndarray]) -> None:
    _, flat, _ = fitted
    with pytest.raises(ValueError, match=r"\(n, 12\)"):
        flat.score(np.zeros((3, 5), np.float32))


def test_features_exactly_on_split_thresholds_go_the_same_way_as_sklearn(
    fitted: tuple[object, FlatForest, np.ndarray],
) -> None:
    # The lockstep walk compares float32 features with thresholds rounded to float32: a value
    # sitting exactly on a split must still take sklearn's branch (x <= t goes left).
    model, flat, test = fitted
    tree = model.estimators_[0].tree_  # type: ignore[attr-defined]
    feats = model.estimators_features_[0]  # type: ignore[attr-defined]
    x = test[:64].copy()
    splits = np.flatnonzero(tree.feature >= 0)[:64]
    for row, node in enumerate(splits):
        x[row, feats[tree.feature[node]]] = np.float32(tree.threshold[node])
    ref = -model.score_samples(x)  # type: ignore[attr-defined]
    np.testing.assert_allclose(flat.score(x), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 33])
def test_batch_and_single_window_paths_agree(
    fitted: tuple[object, FlatForest, np.ndarray], n: int
) -> None:
    # Batches walk 8 windows per tree, single windows 8 trees at once: same sums either way.
    _, flat, test = fitted
    together = flat.score(test[:n])
    alone = np.concatenate([flat.score(test[i : i + 1]) for i in range(n)])
    np.testing.assert_array_equal(together, alone)
