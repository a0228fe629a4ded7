"""Error feedback for sparsified deltas: what one round did not send is added to the next.

Pipeline position: fleet learning (issue 11), between local training and the wire format.
Local training starts from ``global + residual`` (``edge_agent.learn.train_round``), so a
round's update is ``v = (local - start) + residual = local - global``; :func:`error_feedback`
keeps the top-k of ``v`` quantized (``edge_agent.learn.sparse``) and the new residual is ``v``
minus the dequantized values sent, so both the entries left out and the int8 rounding error
reach the desk in a later round (Liu et al., communication-efficient federated anomaly
detection; training from the residual's point as in Basu et al.'s Qsparse-local-SGD).

:class:`ResidualStore` keeps the residual on the gateway under ``<state_dir>/learn/``, written
atomically and durably (``edge_agent.fsutil.atomic_write``). It is keyed by the model's
*layout* (tensor names and shapes): the residual is a direction in parameter space, valid on
top of the next global model of the same network, which is exactly what error feedback needs
across rounds. A model of another layout starts from zero; so does a missing, unreadable or
non-finite file (logged, never fatal). The agent calls :meth:`ResidualStore.clear` when a model
of another lineage arrives (a desk re-training rather than a federated round). Save the new
residual only once the delta it belongs to is in the outbox: a crash in between then sends the
old residual's share twice at worst, never loses it.
"""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.fsutil import atomic_write, read_no_follow
from edge_agent.learn.delta_header import layout_sha256
from edge_agent.learn.sparse import SparseDelta, sparsify
from edge_agent.learn.weights import WeightSet

log = logging.getLogger("edge_agent.learn")

RESIDUAL_DIR = "learn"  # under the agent's state_dir
RESIDUAL_FILE = "residual.npz"
RESIDUAL_MODE = 0o640  # state, not for other users (the unit's UMask is 0027 too)


@dataclass(frozen=True)
class FeedbackStep:
    """One round's compression: what is sent, and what is carried to the next round."""

    sparse: SparseDelta
    residual: np.ndarray  # float32: update + old residual - sent (dequantized)


def error_feedback(
    update: np.ndarray, residual: np.ndarray | None, tensor_sizes: tuple[int, ...], fraction: float
) -> FeedbackStep:
    """Sparsify ``update + residual`` and return what is sent and the new residual."""
    v = np.asarray(update, dtype=np.float32)
    if residual is not None:
        if residual.shape != v.shape:
            raise ValueError(f"residual of shape {residual.shape} for an update of {v.shape}")
        v = v + residual.astype(np.float32)
    sparse = sparsify(v, tensor_sizes, fraction)
    return FeedbackStep(sparse, v - sparse.dense())


class ResidualStore:
    """The residual of the last round, on disk under ``<state_dir>/learn/residual.npz``."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / RESIDUAL_DIR
        self.path = self.dir / RESIDUAL_FILE

    def load(self, base: WeightSet) -> np.ndarray:
        """The stored residual for ``base``'s layout, or zeros (new layout, none, unreadable)."""
        zeros = np.zeros(base.size, dtype=np.float32)
        try:
            data = read_no_follow(self.dir, RESIDUAL_FILE)
        except FileNotFoundError:
            return zeros
        except OSError as exc:
            log.warning("residual %s unreadable (%s); starting from zero", self.path, exc)
            return zeros
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                layout = str(npz["layout"])
                residual = np.asarray(npz["residual"], dtype=np.float32)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("residual %s is damaged (%s); starting from zero", self.path, exc)
            return zeros
        if layout != layout_sha256(base) or residual.shape != (base.size,):
            log.info("residual %s is for another model layout; starting from zero", self.path)
            return zeros
        if not np.isfinite(residual).all():
            log.warning("residual %s holds NaN or infinity; starting from zero", self.path)
            return zeros
        return residual

    def save(self, base: WeightSet, residual: np.ndarray) -> None:
        """Replace the stored residual (atomic, durable) for ``base``'s layout."""
        vec = np.ascontiguousarray(residual, dtype=np.float32)
        if vec.shape != (base.size,):
            raise ValueError(f"residual of shape {vec.shape} for a model of {base.size} parameters")
        buffer = io.BytesIO()
        np.savez(
            buffer, layout=np.array(layout_sha256(base)),
            base=np.array(base.fingerprint()), residual=vec,
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, buffer.getvalue(), mode=RESIDUAL_MODE)

    def clear(self) -> None:
        """Forget the residual (a model of another lineage arrived)."""
        self.path.unlink(missing_ok=True)
