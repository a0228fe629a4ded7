"""Server optimizers: how the round's aggregated update moves the global weights.

Position: after aggregation (``rules``), before the new run is written (``run_out``). The
aggregated client delta Δ (local weights minus global, so already a descent direction) is a
pseudo-gradient (Reddi et al. 2021, "Adaptive Federated Optimization"):

- ``none``: x ← x + lr·Δ (lr 1 is plain FedAvg);
- ``avgm`` (FedAvgM, Hsu et al. 2019): m ← β·m + Δ; x ← x + lr·m;
- ``adam`` (FedAdam): m ← β1·m + (1−β1)·Δ; v ← β2·v + (1−β2)·Δ²; x ← x + lr·m / (√v + τ),
  without bias correction, as in the paper.

The state (m, v, step) is saved in the new run as ``server_state.npz`` and read back from the
base run by the next round, so momentum carries across rounds. A state made by another
optimizer, or for weights other than the base run's, is not used: the round starts afresh and
``federate.json`` says why.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from trainer.federate.settings import FederateSettings

STATE_FILE = "server_state.npz"


@dataclass(frozen=True)
class ServerState:
    """The server optimizer's memory between rounds."""

    optimizer: str
    step: int  # rounds applied with this state
    weights_fingerprint: str  # the global weights this state's last step produced
    m: npt.NDArray[np.float32]  # first moment / momentum (zeros when unused)
    v: npt.NDArray[np.float32]  # second moment (zeros when unused)

    @classmethod
    def fresh(cls, optimizer: str, size: int) -> ServerState:
        zeros = np.zeros(size, np.float32)
        return cls(optimizer, 0, "", zeros, zeros.copy())

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(
            buf,
            optimizer=np.array(self.optimizer),
            step=np.int64(self.step),
            weights_fingerprint=np.array(self.weights_fingerprint),
            m=self.m,
            v=self.v,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str) -> ServerState:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                state = cls(
                    optimizer=str(z["optimizer"]),
                    step=int(z["step"]),
                    weights_fingerprint=str(z["weights_fingerprint"]),
                    m=z["m"].astype(np.float32),
                    v=z["v"].astype(np.float32),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{where}: not a server optimizer state ({exc})") from None
        if state.m.shape != state.v.shape or state.m.ndim != 1:
            raise ValueError(f"{where}: m and v must be vectors of one size")
        return state


def resume_state(
    base_run: Path, settings: FederateSettings, size: int, base_fingerprint: str
) -> tuple[ServerState, str]:
    """The state to continue from, and a note for federate.json (``continued`` or why not)."""
    path = base_run / STATE_FILE
    if settings.server_opt == "none":
        return ServerState.fresh("none", size), "stateless (server_opt none)"
    if not path.is_file():
        return ServerState.fresh(settings.server_opt, size), "fresh: the base run has no state"
    state = ServerState.from_bytes(path.read_bytes(), where=str(path))
    if state.optimizer != settings.server_opt:
        return (
            ServerState.fresh(settings.server_opt, size),
            f"fresh: the base run's state is for {state.optimizer}",
        )
    if state.m.shape[0] != size or state.weights_fingerprint != base_fingerprint:
        return (
            ServerState.fresh(settings.server_opt, size),
            "fresh: the base run's state was made for other weights",
        )
    return state, f"continued from step {state.step}"


def server_step(
    weights: npt.NDArray[np.float32],
    delta: npt.NDArray[np.float32],
    state: ServerState,
    settings: FederateSettings,
) -> tuple[npt.NDArray[np.float32], ServerState]:
    """Apply the aggregated ``delta`` to the flat global ``weights``; returns (new, new state).

    The returned state's ``weights_fingerprint`` is left for the caller to fill in (it knows
    how the weights are named and shaped).
    """
    if weights.shape != delta.shape or state.m.shape != delta.shape:
        raise ValueError(
            f"weights {weights.shape}, delta {delta.shape} and state {state.m.shape} differ"
        )
    lr = settings.effective_server_lr
    d = delta.astype(np.float64)
    m, v = state.m.astype(np.float64), state.v.astype(np.float64)
    if settings.server_opt == "none":
        step = lr * d
    elif settings.server_opt == "avgm":
        m = settings.momentum * m + d
        step = lr * m
    else:
        m = settings.beta1 * m + (1.0 - settings.beta1) * d
        v = settings.beta2 * v + (1.0 - settings.beta2) * d * d
        step = lr * m / (np.sqrt(v) + settings.tau)
    new = (weights.astype(np.float64) + step).astype(np.float32)
    return new, ServerState(
        settings.server_opt,
        state.step + 1,
        "",
        m.astype(np.float32),
        v.astype(np.float32),
    )
