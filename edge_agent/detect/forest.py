"""Stage 1 of the cascade: an Isolation Forest stored as flat arrays and scored with Numba.

The trainer fits scikit-learn's ``IsolationForest`` and flattens it (``trainer.forest``); the
gateway never imports scikit-learn and never unpickles anything. All trees are concatenated
into five node arrays; child indices are absolute, and each leaf stores its whole contribution
to the path length (depth + the expected depth of the unbuilt subtree, ``c(n)``), so scoring is
a handful of comparisons per tree.

The score is ``2 ** (-mean path length / c(max_samples))``, exactly scikit-learn's
``-score_samples``: about 0.5 for ordinary points, towards 1 for isolated ones.

For scoring, the arrays are rearranged once into a layout built for speed (``_Layout``): each
tree breadth first, so a node's two children are neighbours; one 8-byte record per node (the
threshold, and the split feature packed with the first child's index); leaves that lead to
themselves, so every walk takes the same number of steps and eight walks (eight windows of a
batch, or eight trees for a single window) advance in lockstep, overlapping their memory
latency. Scores are bit-identical to a plain walk over the stored arrays.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from edge_agent.detect.envelope import ENVELOPE_ARRAYS, Envelope
from edge_agent.detect.projection import Projection
from edge_agent.detect.residual import RESIDUAL_ARRAYS, WindowResidual, WindowRows
from edge_agent.errors import BundleError
from edge_agent.kernels import CALL, bind, jit, kernel

EULER_GAMMA = 0.5772156649015329
LEAF = -1
FOREST_ARRAYS = ("feature", "threshold", "left", "right", "leaf_value", "roots")


def average_path_length(n: float) -> float:
    """Expected path length of an unsuccessful search in a BST of ``n`` points, ``c(n)``."""
    if n <= 1:
        return 0.0
    if n == 2:
        return 1.0
    return float(2.0 * (np.log(n - 1.0) + EULER_GAMMA) - 2.0 * (n - 1.0) / n)


# Screen scores above this are windows outside the envelope or above the residual limit;
# the forest's own scores, 2 ** -(path length ratio), stay below it.
OUTSIDE_LIMITS = 1.0
# Walks advanced side by side; the two kernels below are written out for exactly this many.
LANES = 8
# A record's packed link is an int32: (first child << feature bits) | feature.
LINK_BITS = 31

I32 = npt.NDArray[np.int32]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


class _Layout(NamedTuple):
    """The forest rearranged for the scoring kernels; see the module docstring."""

    nodes: I32  # (2m,): per node [threshold as float32 bits, packed link]
    thresholds: F32  # the same buffer as float32: thresholds[2k] is node k's threshold
    leaf_value: F64  # (m,) path-length contribution of each leaf (0 for inner nodes)
    roots: I32  # (trees,) each tree's first record
    depth: int  # steps that bring every walk to its leaf (the deepest leaf's depth)
    feature_bits: int
    norm: float  # c(max_samples)


def _breadth_first(
    feature: I32, left: I32, right: I32, roots: I32
) -> tuple[npt.NDArray[np.int64], I32, int]:
    """Old node ids tree by tree, each tree breadth first; its new roots; the deepest level.

    Built a level at a time over all trees with numpy (no compile at start-up). ``ValueError``
    if a node is reachable twice (from two parents or two trees): such arrays are not a
    forest, and expanding them could take exponential time.
    """
    n = feature.shape[0]
    frontier = roots.astype(np.int64)
    tree = np.arange(roots.shape[0], dtype=np.int64)
    nodes, trees, levels = [frontier], [tree], [np.zeros_like(frontier)]
    total, level = frontier.size, 0
    while frontier.size:
        inner = feature[frontier] != LEAF
        # Left then right child of each inner node, parents in breadth-first order.
        frontier = np.stack([left[frontier[inner]], right[frontier[inner]]], axis=1).reshape(-1)
        tree = np.repeat(tree[inner], 2)
        level += 1
        total += frontier.size
        if total > n:
            raise ValueError("a node is reachable from two parents")
        nodes.append(frontier.astype(np.int64))
        trees.append(tree)
        levels.append(np.full(frontier.size, level, np.int64))
    tree_all, level_all = np.concatenate(trees), np.concatenate(levels)
    # By tree, then level; within a level the generation order is already breadth first.
    perm = np.lexsort((np.arange(total), level_all, tree_all))
    order = np.concatenate(nodes)[perm]
    if np.unique(order).size != order.size:
        raise ValueError("a node is reachable from two parents")
    new_roots = np.searchsorted(tree_all[perm], np.arange(roots.shape[0])).astype(np.int32)
    return order, new_roots, int(level_all.max())


def _round_down_f32(threshold: F64) -> F32:
    """Largest float32 <= each threshold.

    For a float32 feature ``x``, ``x <= t`` holds exactly when ``x <= round_down(t)``, so the
    kernels compare in float32 and still agree bit for bit with scikit-learn's float64 test.
    """
    t32 = threshold.astype(np.float32)
    above = t32.astype(np.float64) > threshold
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def _build_layout(forest: FlatForest) -> _Layout:
    """Rearrange checked arrays for the kernels; ``ValueError`` if they are not a forest."""
    order, roots, depth = _breadth_first(forest.feature, forest.left, forest.right, forest.roots)
    size = order.shape[0]
    feature_bits = max(1, (forest.n_features - 1).bit_length())
    if size >= 1 << (LINK_BITS - feature_bits):
        raise ValueError(
            f"{size} nodes with {forest.n_features} features do not fit the scorer's "
            f"{LINK_BITS}-bit links"
        )
    inner = forest.feature[order] != LEAF
    new_id = np.zeros(forest.feature.shape[0], np.int64)
    new_id[order] = np.arange(size)
    # Breadth first, a node's right child directly follows its left one. A leaf's threshold is
    # NaN, so every test there fails and the walk takes "first child + 1": the leaf itself.
    first = np.where(inner, new_id[np.where(inner, forest.left[order], 0)], np.arange(size) - 1)
    link = (first << feature_bits) | np.where(inner, forest.feature[order], 0)
    thresholds = np.where(inner, _round_down_f32(forest.threshold[order]), np.float32(np.nan))
    nodes = np.empty(2 * size, np.int32)
    nodes[0::2] = thresholds.astype(np.float32).view(np.int32)
    nodes[1::2] = link
    return _Layout(
        nodes=nodes,
        thresholds=nodes.view(np.float32),
        leaf_value=np.ascontiguousarray(forest.leaf_value[order]),
        roots=roots,
        depth=depth,
        feature_bits=feature_bits,
        norm=average_path_length(float(forest.max_samples)),
    )


@jit
def _step(
    x: F32, nodes: I32, thresholds: F32, node: int, feature_bits: int
) -> int:  # pragma: no cover - compiled
    """One step down from ``node``: its left child if ``x[feature] <= threshold``, else right."""
    link = nodes[2 * node + 1]
    feature = link & ((1 << feature_bits) - 1)
    # `not <=` sends a NaN feature right, as scikit-learn's `x <= threshold` test does.
    return int((link >> feature_bits) + (not (x[feature] <= thresholds[2 * node])))


@jit
def _score_one(
    x: F32,
    nodes: I32,
    thresholds: F32,
    leaf_value: F64,
    roots: I32,
    depth: int,
    fb: int,
    norm: float,
) -> float:  # pragma: no cover - compiled
    """One window's score, walking LANES trees at a time (the daemon's single-window case)."""
    n_trees = roots.shape[0]
    total = 0.0
    full = n_trees - n_trees % LANES
    for t in range(0, full, LANES):
        n0, n1, n2, n3 = roots[t], roots[t + 1], roots[t + 2], roots[t + 3]
        n4, n5, n6, n7 = roots[t + 4], roots[t + 5], roots[t + 6], roots[t + 7]
        for _ in range(depth):
            n0 = _step(x, nodes, thresholds, n0, fb)
            n1 = _step(x, nodes, thresholds, n1, fb)
            n2 = _step(x, nodes, thresholds, n2, fb)
            n3 = _step(x, nodes, thresholds, n3, fb)
            n4 = _step(x, nodes, thresholds, n4, fb)
            n5 = _step(x, nodes, thresholds, n5, fb)
            n6 = _step(x, nodes, thresholds, n6, fb)
            n7 = _step(x, nodes, thresholds, n7, fb)
        # Added in tree order, as a plain walk would: the same float64 sum to the last bit.
        total += leaf_value[n0]
        total += leaf_value[n1]
        total += leaf_value[n2]
        total += leaf_value[n3]
        total += leaf_value[n4]
        total += leaf_value[n5]
        total += leaf_value[n6]
        total += leaf_value[n7]
    for t in range(full, n_trees):
        node = roots[t]
        for _ in range(depth):
            node = _step(x, nodes, thresholds, node, fb)
        total += leaf_value[node]
    return float(2.0 ** (-(total / n_trees) / norm))


@kernel("f4[:,:], i4[:], f4[:], f8[:], i4[:], i8, i8, f8 -> f8[:]")
def _score_kernel(
    x: F32,
    nodes: I32,
    thresholds: F32,
    leaf_value: F64,
    roots: I32,
    depth: int,
    fb: int,
    norm: float,
) -> F64:  # pragma: no cover - compiled
    """Scores of windows ``x`` (n, F): LANES windows walk each tree together."""
    n = x.shape[0]
    n_trees = roots.shape[0]
    out = np.empty(n, np.float64)
    full = n - n % LANES
    for i in range(0, full, LANES):
        x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        x4, x5, x6, x7 = x[i + 4], x[i + 5], x[i + 6], x[i + 7]
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
        for t in range(n_trees):
            n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = roots[t]
            for _ in range(depth):
                n0 = _step(x0, nodes, thresholds, n0, fb)
                n1 = _step(x1, nodes, thresholds, n1, fb)
                n2 = _step(x2, nodes, thresholds, n2, fb)
                n3 = _step(x3, nodes, thresholds, n3, fb)
                n4 = _step(x4, nodes, thresholds, n4, fb)
                n5 = _step(x5, nodes, thresholds, n5, fb)
                n6 = _step(x6, nodes, thresholds, n6, fb)
                n7 = _step(x7, nodes, thresholds, n7, fb)
            s0 += leaf_value[n0]
            s1 += leaf_value[n1]
            s2 += leaf_value[n2]
            s3 += leaf_value[n3]
            s4 += leaf_value[n4]
            s5 += leaf_value[n5]
            s6 += leaf_value[n6]
            s7 += leaf_value[n7]
        sums = (s0, s1, s2, s3, s4, s5, s6, s7)
        for k in range(LANES):
            out[i + k] = 2.0 ** (-(sums[k] / n_trees) / norm)
    for i in range(full, n):
        out[i] = _score_one(x[i], nodes, thresholds, leaf_value, roots, depth, fb, norm)
    return out


@dataclass(frozen=True)
class FlatForest:
    """An Isolation Forest as flat arrays; see the module docstring."""

    feature: npt.NDArray[np.int32]
    threshold: npt.NDArray[np.float64]
    left: npt.NDArray[np.int32]
    right: npt.NDArray[np.int32]
    leaf_value: npt.NDArray[np.float64]
    roots: npt.NDArray[np.int32]
    max_samples: int
    n_features: int
    # The subspace behind the SPE/T² features; None for a forest on per-channel features only.
    projection: Projection | None = None
    # The training windows' feature ranges (``edge_agent.detect.envelope``); None for a forest
    # exported before the screen took them in, whose screen is the forest's score alone.
    envelope: Envelope | None = None
    # The normal windows' subspace (``edge_agent.detect.residual``); None: not part of the screen.
    residual: WindowResidual | None = None

    def sample_stats(self, xn: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Per-sample statistics the screen features need: ``(m, 2)``, or ``(m, 0)``."""
        if self.projection is None:
            return np.zeros((xn.shape[0], 0), np.float32)
        if xn.shape[1] != self.projection.components.shape[0]:
            raise ValueError(
                f"projection expects {self.projection.components.shape[0]} channels, "
                f"got {xn.shape[1]}"
            )
        return self.projection.sample_stats(xn)

    @property
    def n_trees(self) -> int:
        return int(self.roots.shape[0])

    def score(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Anomaly score in (0, 1) per row of ``features``; high means easy to isolate."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(
                f"forest expects features of shape (n, {self.n_features}), got {x.shape}"
            )
        return self._scorer(x)

    def screen_score(
        self,
        features: npt.NDArray[np.float32],
        windows: npt.NDArray[np.float32] | WindowRows | None = None,
    ) -> npt.NDArray[np.float64]:
        """What the screen threshold is compared with, per window: ``1 + exceedance`` for a
        window outside the envelope or above the residual limit (the larger of the two; above
        every forest score, which stays below 1), else the forest's score. ``windows``
        (``(n, W, C)``, or a pipeline's :class:`WindowRows`) are needed when the forest
        carries a residual subspace."""
        scores = self.score(features)
        outside = np.full(scores.shape[0], -np.inf)
        if self.envelope is not None:
            outside = self.envelope.exceedance(features)
        if self.residual is not None:
            if windows is None:
                raise ValueError("this screen judges windows too: pass them")
            outside = np.maximum(outside, self.residual.exceedance(windows))
        return np.where(outside > 0.0, OUTSIDE_LIMITS + outside, scores)

    @cached_property
    def _scorer(self) -> Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float64]]:
        # The layout's arrays are checked once here, not at every scored row.
        lay = self._layout
        return bind(
            _score_kernel, CALL, lay.nodes, lay.thresholds, lay.leaf_value, lay.roots,
            lay.depth, lay.feature_bits, lay.norm,
        )  # fmt: skip

    @cached_property
    def _layout(self) -> _Layout:
        # Built on first use (or by check()); the stored arrays stay as the trainer wrote them.
        return _build_layout(self)

    def to_bytes(self) -> bytes:
        """An ``.npz`` of plain numeric arrays (loadable with ``allow_pickle=False``)."""
        buf = io.BytesIO()
        arrays: dict[str, npt.NDArray[np.generic]] = {
            "feature": self.feature,
            "threshold": self.threshold,
            "left": self.left,
            "right": self.right,
            "leaf_value": self.leaf_value,
            "roots": self.roots,
            "meta": np.array([self.max_samples, self.n_features], dtype=np.int64),
        }
        if self.projection is not None:
            arrays["pca_components"] = self.projection.components
            arrays["pca_variances"] = self.projection.variances
        if self.envelope is not None:
            arrays.update(self.envelope.arrays())
        if self.residual is not None:
            arrays.update(self.residual.arrays())
        np.savez(buf, allow_pickle=False, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "forest") -> FlatForest:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in (*FOREST_ARRAYS, "meta")}
                projection = None
                if "pca_components" in z.files:
                    projection = Projection(
                        np.ascontiguousarray(z["pca_components"], dtype=np.float64),
                        np.ascontiguousarray(z["pca_variances"], dtype=np.float64),
                    )
                envelope = None
                if ENVELOPE_ARRAYS[0] in z.files:
                    envelope = Envelope(
                        *(np.ascontiguousarray(z[k], dtype=np.float64) for k in ENVELOPE_ARRAYS)
                    )
                residual = None
                if RESIDUAL_ARRAYS[0] in z.files:
                    residual = WindowResidual.from_arrays({k: z[k] for k in RESIDUAL_ARRAYS})
        except (ValueError, KeyError, OSError) as exc:
            raise BundleError(f"{source}: not a valid flat forest ({exc})") from None
        forest = cls(
            feature=arrays["feature"].astype(np.int32),
            threshold=arrays["threshold"].astype(np.float64),
            left=arrays["left"].astype(np.int32),
            right=arrays["right"].astype(np.int32),
            leaf_value=arrays["leaf_value"].astype(np.float64),
            roots=arrays["roots"].astype(np.int32),
            max_samples=int(arrays["meta"][0]),
            n_features=int(arrays["meta"][1]),
            projection=projection,
            envelope=envelope,
            residual=residual,
        )
        forest.check(source)
        return forest

    @classmethod
    def load(cls, path: Path) -> FlatForest:
        return cls.from_bytes(path.read_bytes(), source=str(path))

    def check(self, source: str = "forest") -> None:
        """Refuse arrays that would make the scorer read out of bounds or loop forever."""
        n = self.feature.shape[0]
        same = {a.shape[0] for a in (self.threshold, self.left, self.right, self.leaf_value)}
        if same != {n}:
            raise BundleError(f"{source}: node arrays have different lengths")
        inner = self.feature != LEAF
        if inner.any():
            bad_child = (
                (self.left[inner] <= np.flatnonzero(inner))
                | (self.right[inner] <= np.flatnonzero(inner))
                | (self.left[inner] >= n)
                | (self.right[inner] >= n)
            )
            if bad_child.any():
                # Children always come after their parent, so a walk can only move forward.
                raise BundleError(f"{source}: a node points to an invalid child")
            if (self.feature[inner] >= self.n_features).any() or (self.feature[inner] < 0).any():
                raise BundleError(f"{source}: a node splits on a feature that does not exist")
        if (self.roots < 0).any() or (self.roots >= n).any() or self.n_trees == 0:
            raise BundleError(f"{source}: invalid tree roots")
        if self.max_samples < 1:
            raise BundleError(f"{source}: max_samples must be >= 1")
        if self.n_features < 1:
            raise BundleError(f"{source}: n_features must be >= 1")
        if self.envelope is not None and (why := self.envelope.check(self.n_features)):
            raise BundleError(f"{source}: {why}")
        if self.residual is not None and (why := self.residual.check()):
            raise BundleError(f"{source}: {why}")
        if self.projection is not None:
            comp, var = self.projection.components, self.projection.variances
            if comp.ndim != 2 or var.shape != (comp.shape[1],) or (var <= 0).any():
                raise BundleError(f"{source}: invalid projection arrays")
        try:
            self._layout  # noqa: B018 - builds the scoring layout, which checks the tree shapes
        except ValueError as exc:
            raise BundleError(f"{source}: {exc}") from None
