"""Stage 1 at the desk: fit scikit-learn's Isolation Forest and flatten it for the gateway.

Produces an :class:`edge_agent.detect.forest.FlatForest`, which the bundle stores as plain
arrays; a test checks that its scores equal scikit-learn's ``-score_samples`` exactly.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import IsolationForest

from edge_agent.detect.envelope import Envelope
from edge_agent.detect.forest import LEAF, FlatForest, average_path_length
from edge_agent.detect.projection import Projection
from edge_agent.detect.residual import WindowResidual

# Windows the residual subspace is fitted on at most (evenly spaced); its limit uses them all.
RESIDUAL_FIT_WINDOWS = 20_000


def fit_forest(
    features: npt.NDArray[np.float32],
    *,
    n_trees: int,
    max_samples: int,
    seed: int,
    projection: Projection | None = None,
    envelope: bool = False,
    envelope_quantiles: dict[int, float] | None = None,
) -> tuple[IsolationForest, FlatForest]:
    """Fit on ``features`` (n, F) and return the fitted model and its flat twin, with the
    features' envelope when ``envelope`` is set (``envelope_quantiles``: see
    :meth:`Envelope.of`)."""
    model = IsolationForest(
        n_estimators=n_trees,
        max_samples=min(max_samples, features.shape[0]),
        random_state=seed,
        n_jobs=1,
    )
    model.fit(features)
    flat = flatten_forest(model, n_features=features.shape[1], projection=projection)
    if envelope:
        flat = dataclasses.replace(flat, envelope=Envelope.of(features, envelope_quantiles))
    return model, flat


def flatten_forest(
    model: IsolationForest, *, n_features: int, projection: Projection | None = None
) -> FlatForest:
    """Concatenate the trees of a fitted ``IsolationForest`` into flat node arrays."""
    feats, thrs, lefts, rights, leaves, roots = [], [], [], [], [], []
    offset = 0
    subsampled = model._max_features != n_features
    for tree, tree_features in zip(model.estimators_, model.estimators_features_, strict=True):
        t = tree.tree_
        n = t.node_count
        is_leaf = t.children_left == -1
        depth = np.zeros(n, dtype=np.float64)
        # Nodes are stored parent-before-child, so one forward pass fills every depth.
        for node in range(n):
            if not is_leaf[node]:
                depth[t.children_left[node]] = depth[node] + 1
                depth[t.children_right[node]] = depth[node] + 1
        feature = np.where(is_leaf, LEAF, t.feature).astype(np.int32)
        if subsampled:
            feature = np.where(is_leaf, LEAF, np.asarray(tree_features)[t.feature]).astype(np.int32)
        leaf_value = np.where(
            is_leaf,
            depth + np.array([average_path_length(float(s)) for s in t.n_node_samples]),
            0.0,
        )
        feats.append(feature)
        thrs.append(t.threshold.astype(np.float64))
        lefts.append(np.where(is_leaf, LEAF, t.children_left + offset).astype(np.int32))
        rights.append(np.where(is_leaf, LEAF, t.children_right + offset).astype(np.int32))
        leaves.append(leaf_value)
        roots.append(offset)
        offset += n
    return FlatForest(
        feature=np.concatenate(feats),
        threshold=np.concatenate(thrs),
        left=np.concatenate(lefts),
        right=np.concatenate(rights),
        leaf_value=np.concatenate(leaves),
        roots=np.asarray(roots, dtype=np.int32),
        max_samples=int(model.max_samples_),
        n_features=n_features,
        projection=projection,
    )


def fit_window_residual(
    windows: npt.NDArray[np.float32],
    *,
    explained: float,
    quantile: float,
    held_out: npt.NDArray[np.float32] | None = None,
) -> WindowResidual:
    """The principal subspace of normal training windows ``(n, W, C)`` that keeps
    ``explained`` of their variance, and its SPE limit: the ``quantile`` of the SPE of the
    ``held_out`` normal windows (of the training windows themselves when there are none).

    Held-out windows, because the subspace fits its own windows better than any later one
    (a test shows a limit from their own SPE sending five times the share of fresh normal
    windows on that the quantile promises)."""
    n = windows.shape[0]
    flat = np.asarray(windows, np.float64).reshape(n, -1)
    sample = flat[np.linspace(0, n - 1, min(n, RESIDUAL_FIT_WINDOWS)).astype(int)]
    mean = sample.mean(axis=0)
    _, sv, vt = np.linalg.svd(sample - mean, full_matrices=False)
    energy = np.cumsum(sv**2) / max(float(np.sum(sv**2)), np.finfo(np.float64).tiny)
    k = min(int(np.searchsorted(energy, explained)) + 1, vt.shape[0])
    # The device projects each window on the smaller basis. The complement is spanned by the
    # remaining right singular vectors only when the sample has as many windows as values.
    complement = vt.shape[0] == flat.shape[1] and vt.shape[0] - k < k
    basis = vt[k:] if complement else vt[:k]
    subspace = WindowResidual(mean, np.ascontiguousarray(basis), 1.0, complement)
    judged = windows if held_out is None or held_out.shape[0] == 0 else held_out
    limit = float(np.quantile(subspace.spe(judged), quantile))
    # A subspace that reconstructs its training windows exactly leaves no scale to judge by:
    # the smallest positive float keeps every later residual above the limit, as it should be.
    return dataclasses.replace(subspace, limit=max(limit, np.finfo(np.float64).tiny))
