"""Stand-in gateways for the federate tests: their own keys (``export keygen``) and deltas.

Each gateway's public key is registered as ``KEYDIR/<machine>.pub``; deltas are made with the
gateway's own encoder (``encode_delta`` over a top-k ``sparsify``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edge_agent.learn.delta import encode_delta
from edge_agent.learn.sparse import sparsify
from edge_agent.learn.weights import WeightSet
from export.keys import keygen, load_private_key

ROUND = "r1"
FRACTION = 0.05


class Fleet:
    """Gateway keys (private ones kept here, public ones in ``keydir``) and delta files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keydir = root / "devices"
        self.keydir.mkdir(parents=True)
        self.keys: dict[str, Path] = {}

    def register(self, machine: str) -> None:
        priv, pub = keygen(self.root / "gateways" / machine)
        shutil.copy(pub, self.keydir / f"{machine}.pub")
        self.keys[machine] = priv

    def delta(
        self,
        machine: str,
        base: WeightSet,
        update: np.ndarray,
        *,
        round_id: str = ROUND,
        samples: int = 100,
        signer: str | None = None,
        name: str | None = None,
    ) -> Path:
        sizes = tuple(int(a.size) for a in base.arrays)
        data = encode_delta(
            sparsify(update, sizes, FRACTION),
            base=base,
            machine_id=machine,
            model_version="v1",
            round_id=round_id,
            samples=samples,
            epochs=1,
            key=load_private_key(self.keys[signer or machine]),
        )
        path = self.root / "deltas" / f"{name or machine}.eadl"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        return path


def update(base: WeightSet, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1e-3, base.size).astype(np.float32)
