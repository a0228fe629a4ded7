"""One federated round at the desk: verify the deltas, aggregate, step, write the new run.

Position: the body of ``python -m trainer federate`` (``command`` picks the sources: files, the
broker's spool, or ``partial`` sums). ``tally`` verifies and sums; ``finish_round`` steps and
writes; ``run_round`` is both, for a caller holding delta sources. For every delta,
``edge_agent.learn.decode_delta`` checks the size, the gateway's signature
(``KEYDIR/<machine>.pub``), the base weights fingerprint (the base run's model), the round id,
the parameter count, a second delta from the same gateway in the round (``replayed_round``) and
the norm bound; a refused delta is recorded with its reason and the round goes on. Accepted
deltas are clipped (``clip``) and aggregated (``rules``); the server optimizer (``server_opt``)
moves the base weights; ``run_out`` writes the new run with ``federate.json`` and the optimizer
state.

Memory: with ``fedavg`` the round holds the running sums and one decoded delta at a time, O(P),
whatever the number of gateways (plus 8 bytes per gateway for its norm and a line of the
report). When the clip bound is a multiple of the median norm, every delta is read and verified
twice: a first pass for the norms, a second to aggregate, so every gateway is clipped to the
same bound whatever the order of arrival. A delta whose bytes differ between the passes is
refused (``changed``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.learn.delta import DecodedDelta, DeltaError, decode_delta
from edge_agent.learn.weights import WeightSet
from trainer.federate.aggregate import Aggregator
from trainer.federate.clip import NormClip, l2_norm
from trainer.federate.collect import DeltaSource
from trainer.federate.privacy import GaussianMeanAggregator, lineage, privacy_report
from trainer.federate.report import REPORT_FILE, ClientResult, FederateReport
from trainer.federate.rules import make_aggregator
from trainer.federate.run_out import BaseRun, build_new_run, check_out_dir, load_base, write_new_run
from trainer.federate.server_opt import STATE_FILE, ServerState, resume_state, server_step
from trainer.federate.settings import FederateSettings
from trainer.run_record import FederationSummary


class RoundFailed(Exception):
    """Too few deltas were accepted: no new run. ``clients`` says what happened to each."""

    def __init__(self, message: str, clients: list[ClientResult]) -> None:
        super().__init__(message)
        self.clients = clients


def _refused(source: DeltaSource, size: int, reason: str, message: str) -> ClientResult:
    return ClientResult(
        source=source.name,
        machine=None,
        bytes=size,
        status="refused",
        reason=reason,
        message=message,
    )


def _verify(
    source: DeltaSource,
    keys: Mapping[str, Ed25519PublicKey],
    base: BaseRun,
    settings: FederateSettings,
    seen: set[tuple[str, str]],
) -> tuple[ClientResult, DecodedDelta | None, str]:
    """Read and decode one delta: (its record, the decoded delta or None, sha256 of bytes)."""
    try:
        data = source.read()
    except OSError as exc:
        return _refused(source, 0, "unreadable", f"cannot read the delta: {exc}"), None, ""
    digest = hashlib.sha256(data).hexdigest()
    try:
        decoded = decode_delta(
            data,
            public_keys=keys,
            expected_base_fingerprint=base.fingerprint,
            tensor_sizes=base.weights.tensor_sizes,
            seen_rounds=seen,
            expected_round=settings.round_id,
            expected_size=base.weights.size,
            max_bytes=settings.max_delta_bytes,
            max_norm=settings.max_norm,
        )
    except DeltaError as exc:
        return _refused(source, len(data), exc.reason, str(exc)), None, digest
    h = decoded.header
    # The norm of the values sent (decode_delta checked the header's against it): k values,
    # not the dense vector.
    norm = decoded.sparse.l2_norm()
    result = ClientResult(
        source=source.name,
        machine=h.machine_id,
        bytes=len(data),
        status="accepted",
        samples=h.samples,
        norm=norm,
    )
    return result, decoded, digest


@dataclass
class Tally:
    """A round's verified, clipped and aggregated deltas, before the server step.

    ``clip_bounds``: the bound each aggregator process clipped to (one entry per process;
    several after ``partial.merge_partials``).
    """

    aggregator: Aggregator
    clients: list[ClientResult]
    clip_mode: str
    clip_bounds: list[float] = field(default_factory=list)

    @property
    def accepted(self) -> list[ClientResult]:
        return [c for c in self.clients if c.status == "accepted"]


def tally(
    base: BaseRun,
    sources: Sequence[DeltaSource],
    keys: Mapping[str, Ed25519PublicKey],
    settings: FederateSettings,
) -> Tally:
    """Verify every source, clip and aggregate the accepted ones (two passes when the clip
    bound is a multiple of the median norm)."""
    clip = NormClip.from_settings(settings)
    agg = make_aggregator(settings, base.weights.size)
    two_pass = clip.mode == "median_multiple"
    results: list[ClientResult] = []
    seen: set[tuple[str, str]] = set()
    digests: dict[int, str] = {}
    for i, source in enumerate(sources):
        result, decoded, digest = _verify(source, keys, base, settings, seen)
        if decoded is not None:
            seen.add((decoded.header.machine_id, decoded.header.round_id))
            clip.observe(result.norm or 0.0)
            if two_pass:
                digests[i] = digest
            else:
                c = clip.clip(decoded.vector, norm=decoded.sparse.l2_norm())
                agg.add(c.vector, decoded.header.samples)
                result = result.model_copy(update={"clip_scale": c.scale})
        results.append(result)
    for i, digest in digests.items():
        # Second pass: the bound is now the median of every accepted norm.
        result, decoded, again = _verify(sources[i], keys, base, settings, set())
        if decoded is None or again != digest:
            results[i] = _refused(
                sources[i], results[i].bytes, "changed", "the delta changed between the passes"
            )
            continue
        c = clip.clip(decoded.vector, norm=decoded.sparse.l2_norm())
        agg.add(c.vector, decoded.header.samples)
        results[i] = results[i].model_copy(update={"clip_scale": c.scale})
    bound = clip.bound()
    return Tally(agg, results, clip.mode, [] if bound is None else [bound])


def run_round(
    base_run: Path,
    sources: Sequence[DeltaSource],
    keys: Mapping[str, Ed25519PublicKey],
    settings: FederateSettings,
    out: Path,
    *,
    overwrite: bool = False,
    base: BaseRun | None = None,
) -> FederateReport:
    """Run one round over ``sources`` and write ``out``; RoundFailed when too few are accepted.

    ``base``: the base run already loaded from ``base_run`` (the broker round loads it first).
    """
    t0 = time.perf_counter()
    check_out_dir(out, base_run, overwrite=overwrite)
    if base is None:
        base = load_base(base_run)
    return finish_round(
        base, tally(base, sources, keys, settings), settings, out, overwrite=overwrite, t0=t0
    )


def finish_round(
    base: BaseRun,
    counted: Tally,
    settings: FederateSettings,
    out: Path,
    *,
    overwrite: bool = False,
    t0: float | None = None,
) -> FederateReport:
    """Server step over the tally, recalibrate, write ``out`` with federate.json and the
    optimizer state; RoundFailed when fewer than ``settings.min_clients`` were accepted."""
    t0 = time.perf_counter() if t0 is None else t0
    results, accepted = counted.clients, counted.accepted
    if len(accepted) < settings.min_clients:
        raise RoundFailed(
            f"round {settings.round_id}: {len(accepted)} of {len(results)} deltas accepted, "
            f"{settings.min_clients} needed (--min-clients); no new run written",
            results,
        )
    if settings.privacy is not None and not isinstance(counted.aggregator, GaussianMeanAggregator):
        raise ValueError("central DP: the round's sums carry no noise (a split round?)")
    size = base.weights.size
    mean = counted.aggregator.result()
    dp_lineage = lineage(base.run.record.federation, settings.privacy)
    state, note = resume_state(base.path, settings, size, base.fingerprint)
    base_flat = base.weights.flat()
    new_flat, state = server_step(base_flat, mean, state, settings)
    new = WeightSet.from_flat(base.weights, new_flat)
    samples = sum(r.samples or 0 for r in accepted)
    federation = FederationSummary(
        round_id=settings.round_id,
        clients_accepted=len(accepted),
        clients_refused=len(results) - len(accepted),
        samples=samples,
        rule=settings.rule,
        server_opt=settings.server_opt,
        base_fingerprint=base.fingerprint,
        weights_fingerprint=new.fingerprint(),
        dp_noise_multipliers=dp_lineage,
    )
    record, model = build_new_run(base, new, federation, seconds=time.perf_counter() - t0)
    report = FederateReport(
        round_id=settings.round_id,
        base_run=str(base.path),
        base_fingerprint=base.fingerprint,
        weights_fingerprint=federation.weights_fingerprint,
        parameters=size,
        settings=settings,
        clip_mode=counted.clip_mode,
        clip_bounds=counted.clip_bounds,
        server_state=note,
        clients=results,
        accepted=len(accepted),
        refused=len(results) - len(accepted),
        samples=samples,
        bytes_received=sum(r.bytes for r in results),
        aggregate_norm=l2_norm(mean),
        step_norm=l2_norm(new_flat - base_flat),
        alert_threshold_base=base.run.record.threshold.alert_threshold,
        alert_threshold=record.threshold.alert_threshold,
        seconds=round(time.perf_counter() - t0, 3),
        privacy=None if settings.privacy is None
        else privacy_report(settings.privacy, dp_lineage, len(accepted)),
    )
    extra = {REPORT_FILE: report.to_json().encode()}
    if settings.server_opt != "none":
        saved = ServerState(state.optimizer, state.step, new.fingerprint(), state.m, state.v)
        extra[STATE_FILE] = saved.to_bytes()
    write_new_run(out, base, record, model, extra_files=extra, overwrite=overwrite)
    return report
