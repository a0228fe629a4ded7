"""Stage 1's third test: how badly a linear model of normal windows reconstructs this one.

The autoencoder of stage 2 learns to reconstruct normal windows; so, far more cheaply, does the
principal subspace of normal windows, each window flattened to ``W * C`` values. The screen
asks it first: the mean squared residual of a window off that subspace (its SPE), against the
same statistic over the training windows. A window the subspace reconstructs no worse than
``limit`` (a high quantile of the training windows' SPE) is not sent on by this test; one it
reconstructs worse is, by :meth:`WindowResidual.exceedance` = ``SPE / limit - 1``.

Where the forest and the envelope judge a window by summaries, this judges its shape, which is
what stage 2 judges: on the plant simulator the windows the autoencoder alerts on are almost
all above the limit, while most normal windows are below it. The cost on the device is one
matrix product per window, by whichever basis is smaller: the subspace's ``k`` components, or
the ``W * C - k`` that span its orthogonal complement (SKAB's windows keep 184 of 256
dimensions, so 72 complement rows cost 2.5 times less than 184 subspace rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.detect.envelope import BLOCK

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

RESIDUAL_ARRAYS = ("residual_mean", "residual_components", "residual_limit", "residual_complement")


class WindowRows(Protocol):
    """Windows laid out as rows without copying them (``edge_agent.detect.ring.WindowSource``)."""

    def rows(self) -> tuple[F32, I64]: ...


@dataclass(frozen=True)
class WindowResidual:
    """The principal subspace of flattened normal windows: ``mean`` ``(W*C,)``, an orthonormal
    basis ``components`` ``(m, W*C)``, and the SPE ``limit`` a normal window rarely exceeds.

    ``complement=False``: the basis spans the subspace (``m = k``); ``True``: it spans the
    subspace's orthogonal complement (``m = W*C - k``), where the residual lies."""

    mean: F64
    components: F64
    limit: float
    complement: bool = False

    @property
    def cells(self) -> int:
        """``W * C``: the values of one window."""
        return int(self.mean.shape[0])

    def spe(self, windows: F32 | WindowRows) -> F64:
        """Mean squared residual off the subspace of each window: ``(n, W, C)`` windows, or
        windows that lay themselves out as rows (the pipeline's, never gathered whole).

        For ``z = x - mean``, the residual is ``|Qz|²`` with a complement basis ``Q``, and
        ``|z|² - |Pz|²`` with a subspace basis ``P``; computed in float64, block by block."""
        if isinstance(windows, np.ndarray):
            table = windows.reshape(windows.shape[0], -1)
            starts = None
        else:
            table, starts = windows.rows()
        n = table.shape[0] if starts is None else starts.shape[0]
        if table.shape[1] != self.cells:
            raise ValueError(f"windows of {table.shape[1]} values; the subspace has {self.cells}")
        out = np.empty(n, np.float64)
        for a in range(0, n, BLOCK):
            block = table[a : a + BLOCK] if starts is None else table[starts[a : a + BLOCK]]
            z = block.astype(np.float64) - self.mean
            proj = z @ self.components.T
            sq = np.einsum("ij,ij->i", proj, proj)
            if not self.complement:
                sq = np.maximum(np.einsum("ij,ij->i", z, z) - sq, 0.0)
            out[a : a + BLOCK] = sq / self.cells
        return out

    def exceedance(self, windows: F32 | WindowRows) -> F64:
        """``SPE / limit - 1`` per window: above 0 when the subspace fits it worse than the
        training windows' limit."""
        out: F64 = self.spe(windows) / self.limit - 1.0
        return out

    def widened(self, factor: float) -> WindowResidual:
        """This subspace with its limit ``factor`` times higher (at least 1): the headroom the
        trainer gives a limit fitted on a short history, as :meth:`Envelope.widened` does."""
        if not (np.isfinite(factor) and factor >= 1.0):
            raise ValueError(f"a residual limit is raised by a factor of at least 1, not {factor}")
        return WindowResidual(self.mean, self.components, self.limit * factor, self.complement)

    def arrays(self) -> dict[str, F64]:
        values = (self.mean, self.components, np.array([self.limit]), np.array([self.complement]))
        return dict(zip(RESIDUAL_ARRAYS, values, strict=True))

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[np.generic]]) -> WindowResidual:
        limit = np.asarray(arrays["residual_limit"], np.float64).reshape(-1)
        complement = np.asarray(arrays["residual_complement"]).reshape(-1)
        if complement.dtype != np.bool_ or complement.size != 1:
            raise ValueError("residual_complement is not one boolean")
        return cls(
            np.ascontiguousarray(arrays["residual_mean"], dtype=np.float64),
            np.ascontiguousarray(arrays["residual_components"], dtype=np.float64),
            float(limit[0]) if limit.size == 1 else float("nan"),
            bool(complement[0]),
        )

    def check(self) -> str | None:
        """What is wrong with these arrays, or None."""
        if self.mean.ndim != 1 or self.components.ndim != 2:
            return "residual arrays of the wrong rank"
        if self.components.shape[1] != self.cells:
            return (
                f"residual components of {self.components.shape[1]} values for windows of "
                f"{self.cells}"
            )
        if not (np.isfinite(self.mean).all() and np.isfinite(self.components).all()):
            return "residual arrays hold non-finite values"
        if not (np.isfinite(self.limit) and self.limit > 0):
            return f"residual limit {self.limit} is not a positive number"
        return None
