"""Norm clipping of client updates before they are aggregated.

Sits between delta verification (``collect``) and the aggregation rule (``aggregate`` /
``robust``): every accepted update is scaled down to an L2 bound so that no single gateway,
faulty or malicious, moves the global model further than an honest one would. The bound is
either fixed (``clip_norm``) or a multiple of the median norm of the round's updates
(``clip_multiple``): the median cannot be dragged by a minority of outliers, so a scaled or
random update is cut back to the size of a typical one.

``NormClip`` keeps the norms it has observed (one float per client, not the updates), so its
memory grows by 8 bytes per gateway; the median is over the norms observed so far. The desk
runs a first pass that observes every accepted delta's norm before any update is added, so
every client of a round is clipped to the same bound whatever order the deltas arrive in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from trainer.federate.settings import FederateSettings


@dataclass(frozen=True)
class Clipped:
    """One update after clipping: the vector, its norm before, and the scale applied (<= 1)."""

    vector: npt.NDArray[np.float32]
    norm: float
    scale: float


def l2_norm(update: npt.NDArray[np.float32]) -> float:
    """Euclidean norm, accumulated in float64 without BLAS (whose thread start-up costs more
    than the sum on a 60k vector, and contends with everything else on a small desk)."""
    wide = update.astype(np.float64)
    return float(np.sqrt(np.einsum("i,i->", wide, wide)))


def clip_to(
    update: npt.NDArray[np.float32], bound: float | None, *, norm: float | None = None
) -> Clipped:
    """Scale ``update`` down so its L2 norm is at most ``bound`` (None: leave it as is).

    ``norm``: the update's norm when the caller knows it already (a decoded delta's).
    """
    norm = l2_norm(update) if norm is None else norm
    if bound is None or norm <= bound or norm == 0.0:
        return Clipped(update, norm, 1.0)
    scale = bound / norm
    return Clipped((update * np.float32(scale)).astype(np.float32), norm, scale)


@dataclass
class NormClip:
    """The clipping bound of a round: fixed, or ``multiple`` x the median of observed norms."""

    fixed: float | None = None
    multiple: float | None = None
    norms: list[float] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: FederateSettings) -> NormClip:
        if settings.clip_norm is not None:
            return cls(fixed=settings.clip_norm)
        return cls(multiple=settings.clip_multiple)

    @property
    def mode(self) -> str:
        """``fixed``, ``median_multiple`` or ``off``: what federate.json records."""
        if self.fixed is not None:
            return "fixed"
        return "median_multiple" if self.multiple is not None else "off"

    def observe(self, norm: float) -> None:
        """Record one accepted update's L2 norm (before clipping)."""
        if not np.isfinite(norm) or norm < 0:
            raise ValueError(f"update norm must be finite and >= 0, got {norm}")
        self.norms.append(float(norm))

    def bound(self) -> float | None:
        """The current bound: None when clipping is off or no norm is observed yet."""
        if self.fixed is not None:
            return self.fixed
        if self.multiple is None or not self.norms:
            return None
        return self.multiple * float(np.median(self.norms))

    def clip(self, update: npt.NDArray[np.float32], *, norm: float | None = None) -> Clipped:
        """Clip ``update`` (of L2 norm ``norm``, when known) to the current bound."""
        return clip_to(update, self.bound(), norm=norm)
