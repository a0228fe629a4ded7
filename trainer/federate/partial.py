"""Partial sums of a round, so several aggregator processes can share one large fleet.

Position: between ``round.tally`` and ``round.finish_round`` when a round is split. Each
worker (``trainer federate ... --partial-out P``, typically ``--broker`` in one MQTT v5
shared-subscription group, so the broker hands each worker a share of the deltas) verifies,
clips and sums its share and writes a partial; ``trainer federate --merge P1 P2 ...`` adds the
partial sums (``MeanAggregator.merge``, exact) and finishes the round as one process would.

Only ``fedavg`` splits: its state is P float64 sums and two counts, whatever the share's size.
The coordinate-wise rules need every update in one place (``robust``). Each worker clips to
its own share's median norm; with shares of hundreds of gateways these medians agree closely,
and federate.json lists every bound. A gateway accepted by two workers (a QoS 1 redelivery
that the broker routed to another member) would be counted twice, which sums cannot undo:
the merge refuses and names it; aggregate the workers' spools with ``--deltas`` instead, or
route each gateway to one member (a hash-by-topic or hash-by-client shared-subscription
strategy on the broker).

File: an npz (written atomically) with ``sum`` (float64), ``count``, ``samples`` and ``meta``
(JSON: round id, base fingerprint, clip mode and bound, and every client's record).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from edge_agent.fsutil import atomic_write
from export.errors import ExportError
from trainer.federate.aggregate import MeanAggregator
from trainer.federate.report import ClientResult
from trainer.federate.round import Tally
from trainer.federate.settings import FederateSettings


def write_partial(path: Path, counted: Tally, *, round_id: str, base_fingerprint: str) -> None:
    """Write ``counted`` (a fedavg tally) to ``path`` atomically."""
    if not isinstance(counted.aggregator, MeanAggregator):
        raise ExportError("--partial-out: only the fedavg rule can be split over processes")
    meta = {
        "round_id": round_id,
        "base_fingerprint": base_fingerprint,
        "clip_mode": counted.clip_mode,
        "clip_bounds": counted.clip_bounds,
        "clients": [c.model_dump(mode="json") for c in counted.clients],
    }
    buf = io.BytesIO()
    np.savez(
        buf,
        partial=np.frombuffer(counted.aggregator.to_bytes(), np.uint8),
        meta=np.array(json.dumps(meta)),
    )
    atomic_write(path, buf.getvalue())


def _read(path: Path) -> tuple[MeanAggregator, dict[str, object], list[ClientResult]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            sums = MeanAggregator.from_bytes(z["partial"].tobytes())
            meta = json.loads(str(z["meta"]))
        clients = [ClientResult.model_validate(c) for c in meta["clients"]]
    except FileNotFoundError:
        raise ExportError(f"{path}: partial not found") from None
    except (OSError, KeyError, TypeError, ValueError, ValidationError) as exc:
        raise ExportError(f"{path}: not a federate partial ({exc})") from None
    return sums, meta, clients


def merge_partials(
    paths: list[Path], *, settings: FederateSettings, base_fingerprint: str, size: int
) -> Tally:
    """One tally from the workers' partials; ExportError when one is of another round or
    base, of another size, or a gateway was accepted by two workers."""
    if settings.rule != "fedavg":
        raise ExportError("--merge: only fedavg partials can be merged")
    total = MeanAggregator(size)
    clients: list[ClientResult] = []
    bounds: list[float] = []
    modes: set[str] = set()
    accepted_in: dict[str, Path] = {}
    for path in paths:
        sums, meta, part_clients = _read(path)
        if meta.get("round_id") != settings.round_id:
            raise ExportError(f"{path}: round {meta.get('round_id')!r}, not {settings.round_id!r}")
        if meta.get("base_fingerprint") != base_fingerprint:
            raise ExportError(f"{path}: made against other base weights than --run's")
        for c in part_clients:
            if c.status == "accepted" and c.machine is not None:
                if c.machine in accepted_in:
                    raise ExportError(
                        f"{c.machine} was accepted by two aggregators ({accepted_in[c.machine]} "
                        f"and {path}); aggregate their spools with --deltas instead"
                    )
                accepted_in[c.machine] = path
        try:
            total.merge(sums)
        except ValueError as exc:
            raise ExportError(f"{path}: {exc}") from None
        clients += part_clients
        bounds += [float(b) for b in meta.get("clip_bounds", [])]  # type: ignore[attr-defined]
        modes.add(str(meta.get("clip_mode")))
    return Tally(total, clients, "+".join(sorted(modes)), bounds)
