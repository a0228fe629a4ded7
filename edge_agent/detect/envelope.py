"""Stage 1's second test: is any window feature outside what the training windows showed?

The Isolation Forest ranks windows by how easy they are to isolate, which dilutes a fault that
moves two of forty features: a spike, a level shift or a noise burst in one channel often
scores like an ordinary window. Yet such a window usually lies outside the range of values a
feature took over all normal training windows, something a comparison per feature sees at once.
The envelope is that range: per feature the minimum and maximum over the training windows, and
the median between them; for the window's mean sample SPE (off the normal subspace of
``edge_agent.detect.projection``) a high quantile instead of the maximum, set by the trainer.

:meth:`Envelope.exceedance` measures how far a window lies outside it: per feature the distance
beyond the nearer edge, as a fraction of the distance from the median to that edge; the largest
over features. It is at most 0 for a window inside the envelope. The screen
(:meth:`edge_agent.detect.forest.FlatForest.screen_score`) sends a window outside it to stage
2 before the forest's score is consulted; the trainer calibrates one threshold over both.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

ENVELOPE_ARRAYS = ("envelope_lo", "envelope_mid", "envelope_hi")
# Rows judged per block: a block's float64 copy stays in cache, which makes a long replay
# several times faster than one pass over every row (edge_agent.detect.residual uses it too).
BLOCK = 512
# An edge this close to the median (a constant feature) counts distances in these units.
MIN_HALF_WIDTH = 1e-6


@dataclass(frozen=True)
class Envelope:
    """Per-feature ``lo <= mid <= hi`` over the normal training windows' features."""

    lo: F64
    mid: F64
    hi: F64

    @classmethod
    def of(cls, features: F32, upper_quantiles: dict[int, float] | None = None) -> Envelope:
        """The envelope of training windows' features ``(n, F)``; non-finite rows are left out.

        ``upper_quantiles`` sets the upper edge of some features (column: quantile, at least
        0.5) to a quantile instead of the maximum: for a residual, whose high tail is where
        faults show, the largest training value is an outlier's, not a normal window's."""
        f = np.asarray(features, np.float64)
        f = f[np.isfinite(f).all(axis=1)]
        if f.shape[0] == 0:
            raise ValueError("no finite feature rows to take an envelope of")
        hi = f.max(axis=0)
        for col, q in (upper_quantiles or {}).items():
            if not 0.5 <= q <= 1.0:
                raise ValueError(f"upper quantile {q} of feature {col} is not in [0.5, 1]")
            hi[col] = np.quantile(f[:, col], q)
        return cls(f.min(axis=0), np.median(f, axis=0), hi)

    def widened(self, factor: float) -> Envelope:
        """This envelope with each edge ``factor`` times as far from the median (at least 1).

        The trainer widens the edges of an envelope fitted on a short history by the headroom
        stage 2's threshold gets for it (``trainer.fit.screen_headroom``): a few hundred
        windows never show all of normal either."""
        if not (np.isfinite(factor) and factor >= 1.0):
            raise ValueError(f"an envelope is widened by a factor of at least 1, not {factor}")
        lo = self.mid - factor * (self.mid - self.lo)
        return Envelope(lo, self.mid, self.mid + factor * (self.hi - self.mid))

    @cached_property  # once per model, not at every window the daemon scores
    def _scales(self) -> tuple[F64, F64]:
        below = 1.0 / np.maximum(self.mid - self.lo, MIN_HALF_WIDTH)
        above = 1.0 / np.maximum(self.hi - self.mid, MIN_HALF_WIDTH)
        return below, above

    def exceedance(self, features: F32) -> F64:
        """Per row of ``features`` ``(n, F)``: the largest relative distance outside the
        envelope over its features; at most 0 inside. A NaN feature gives NaN."""
        below, above = self._scales
        n = features.shape[0]
        out = np.empty(n, np.float64)
        for a in range(0, n, BLOCK):  # a block at a time stays in cache
            x = features[a : a + BLOCK].astype(np.float64)
            outside = np.maximum((self.lo - x) * below, (x - self.hi) * above)
            out[a : a + BLOCK] = outside.max(axis=1)
        return out

    def arrays(self) -> dict[str, F64]:
        return dict(zip(ENVELOPE_ARRAYS, (self.lo, self.mid, self.hi), strict=True))

    def check(self, n_features: int) -> str | None:
        """What is wrong with these arrays for a forest of ``n_features``, or None."""
        shapes = {a.shape for a in (self.lo, self.mid, self.hi)}
        if shapes != {(n_features,)}:
            return f"envelope arrays of shapes {sorted(shapes)} for {n_features} features"
        if not (np.isfinite(self.lo).all() and np.isfinite(self.hi).all()):
            return "envelope arrays hold non-finite values"
        if ((self.lo > self.mid) | (self.mid > self.hi)).any():
            return "envelope arrays are not ordered lo <= mid <= hi"
        return None
