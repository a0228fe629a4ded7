"""Stage 1 of the cascade: an Isolation Forest stored as flat arrays and scored with Numba.

The trainer fits scikit-learn's ``IsolationForest`` and flattens it (``trainer.forest``); the
gateway never imports scikit-learn and never unpickles anything. All trees are concatenated
into five node arrays; child indices are absolute, and each leaf stores its whole contribution
to the path length (depth + the expected depth of the unbuilt subtree, ``c(n)``), so scoring is
a handful of comparisons per tree.

The score is ``2 ** (-mean path length / c(max_samples))``, exactly scikit-learn's
``-score_samples``: about 0.5 for ordinary points, towards 1 for isolated ones.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import numpy.typing as npt

from edge_agent.detect.projection import Projection
from edge_agent.errors import BundleError

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


@numba.njit(cache=True)
def _score_kernel(
    x: npt.NDArray[np.float32],
    feature: npt.NDArray[np.int32],
    threshold: npt.NDArray[np.float64],
    left: npt.NDArray[np.int32],
    right: npt.NDArray[np.int32],
    leaf_value: npt.NDArray[np.float64],
    roots: npt.NDArray[np.int32],
    norm: float,
) -> npt.NDArray[np.float64]:  # pragma: no cover - compiled
    n = x.shape[0]
    out = np.empty(n, np.float64)
    n_trees = roots.shape[0]
    for i in range(n):
        total = 0.0
        for t in range(n_trees):
            node = roots[t]
            while feature[node] != LEAF:
                # scikit-learn compares float32 features against float64 thresholds.
                node = left[node] if x[i, feature[node]] <= threshold[node] else right[node]
            total += leaf_value[node]
        out[i] = 2.0 ** (-(total / n_trees) / norm)
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
        norm = average_path_length(float(self.max_samples))
        return _score_kernel(
            x,
            self.feature,
            self.threshold,
            self.left,
            self.right,
            self.leaf_value,
            self.roots,
            norm,
        )

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
        if self.projection is not None:
            comp, var = self.projection.components, self.projection.variances
            if comp.ndim != 2 or var.shape != (comp.shape[1],) or (var <= 0).any():
                raise BundleError(f"{source}: invalid projection arrays")
