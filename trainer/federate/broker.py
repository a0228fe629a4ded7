"""``trainer federate --broker``: announce the round to the fleet and collect its deltas.

Position: the network front of a round; what it collects goes through the same verification
and aggregation as ``--deltas`` files (``round``). The desk

1. subscribes to ``$share/<group>/<prefix>/+/delta`` (an MQTT v5 shared subscription: several
   aggregator processes in one group each receive a share of the fleet's deltas, and a
   clustered broker spreads the group's members over its nodes);
2. signs a :class:`edge_agent.learn.rounds.RoundAnnouncement` with the fleet key (the key that
   signs bundles, which every gateway already trusts) and publishes it retained on
   ``<prefix>/fleet/round``: the base model's version and weights fingerprint, the local
   training settings and the deadline;
3. writes every delta that arrives to a spool directory (one file per message, so memory does
   not grow with the fleet) until the deadline or until every registered gateway has sent one.

The spool is kept after the round: it is the round's evidence, and ``--deltas SPOOL/*``
replays the aggregation exactly. The announcement stays retained; after its deadline gateways
refuse it (``expired``), so it needs no clean-up.
"""

from __future__ import annotations

import queue
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from edge_agent.deliver.config import MqttConfig
from edge_agent.learn.rounds import RoundAnnouncement, iso_utc, round_topic, sign_round
from export.broker import DeskLink
from export.errors import ExportError
from trainer.federate.collect import DeltaSource, file_sources
from trainer.federate.run_out import BaseRun
from trainer.federate.settings import FederateSettings

DELTA_SUFFIX = "delta"
SPOOL_SUFFIX = ".eadl"
INBOX_POLL_S = 0.2  # how often the collector looks at the clock while the fleet is quiet


def delta_filter(prefix: str, group: str) -> str:
    """The shared-subscription filter of the round's deltas."""
    return f"$share/{group}/{prefix}/+/{DELTA_SUFFIX}"


def machine_of(topic: str, prefix: str) -> str | None:
    """``<prefix>/<machine>/delta`` → machine, None for any other topic."""
    head, _, rest = topic.partition(prefix + "/")
    machine, _, tail = rest.partition("/")
    if head or not machine or tail != DELTA_SUFFIX:
        return None
    return machine


@dataclass(frozen=True)
class Collected:
    """What a broker round gathered: the spooled sources and who sent them."""

    sources: list[DeltaSource]
    machines: set[str]
    timed_out: bool


def announce(
    link: DeskLink, prefix: str, announcement: RoundAnnouncement, key: Ed25519PrivateKey
) -> None:
    """Publish the signed announcement, retained (waits for the broker's PUBACK)."""
    link.publish([(round_topic(prefix), sign_round(announcement, key))], retain=True)


def collect(
    link: DeskLink,
    *,
    prefix: str,
    spool: Path,
    registered: set[str],
    deadline: float,
    clock: Callable[[], float] = time.time,
) -> Collected:
    """Spool deltas from ``link.inbox`` until ``deadline`` (epoch s) or every ``registered``
    machine has sent one. The caller subscribed (``delta_filter``) before announcing."""
    spool.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    machines: set[str] = set()
    timed_out = True
    while (left := deadline - clock()) > 0:
        if registered and registered <= machines:
            timed_out = False
            break
        try:
            msg = link.inbox.get(timeout=min(INBOX_POLL_S, left))
        except queue.Empty:
            continue
        machine = machine_of(msg.topic, prefix)
        if machine is None or msg.retained:
            continue  # a stale retained delta is no answer to this round
        path = spool / f"{len(paths):06d}-{machine}{SPOOL_SUFFIX}"
        path.write_bytes(msg.payload)
        paths.append(path)
        machines.add(machine)
    return Collected(file_sources(paths), machines, timed_out)


def base_model_version(bundle_dir: Path, key: Ed25519PrivateKey, base_fingerprint: str) -> str:
    """The ``model_version`` of the fleet's current bundle, after checking that it is signed by
    ``key`` and carries the base run's weights; ExportError (an operator error) if not."""
    from edge_agent.bundle.verify import verify_bundle
    from edge_agent.learn.bundle_weights import load_train_weights
    from export.publish import public_pem

    with tempfile.TemporaryDirectory(prefix="federate-") as tmp:
        pub = Path(tmp) / "signing.pub"
        pub.write_bytes(public_pem(key))
        verified = verify_bundle(bundle_dir, pub)
    try:
        weights = load_train_weights(verified.path, verified.manifest)
    except ValueError as exc:
        raise ExportError(f"{bundle_dir}: {exc}") from None
    if weights is None:
        raise ExportError(f"{bundle_dir}: the bundle has no trainable weights (learning section)")
    if weights.fingerprint() != base_fingerprint:
        raise ExportError(
            f"{bundle_dir}: its weights ({weights.fingerprint()[:12]}…) are not the base run's "
            f"({base_fingerprint[:12]}…): pass the bundle exported from --run"
        )
    return verified.manifest.model_version


def broker_collect(
    cfg: MqttConfig,
    *,
    base: BaseRun,
    bundle: Path | None,
    key: Ed25519PrivateKey | None,
    registered: set[str],
    settings: FederateSettings,
    training: Mapping[str, object],
    group: str,
    spool: Path,
    timeout_s: float,
) -> Collected:
    """Subscribe, announce the round (when ``key`` and ``bundle`` are given: one process of a
    split round announces, the others only collect), and spool the deltas until the deadline
    or until every ``registered`` machine has answered (an empty set: the deadline only).
    ``training``: the announcement's local settings (epochs, batch_size, learning_rate,
    prox_mu, topk_fraction, min_windows, seed)."""
    if spool.exists() and any(spool.iterdir()):
        raise ExportError(f"{spool}: the spool of an earlier round is in the way; move it")
    now = time.time()
    announcement = None
    if key is not None and bundle is not None:
        try:
            announcement = RoundAnnouncement.model_validate(
                {
                    **training,
                    "round_id": settings.round_id,
                    "base_model_version": base_model_version(bundle, key, base.fingerprint),
                    "base_fingerprint": base.fingerprint,
                    "issued_at": iso_utc(now),
                    "deadline": iso_utc(now + timeout_s),
                }
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise ExportError(f"round announcement: {problems}") from None
    with DeskLink(cfg) as link:
        link.subscribe([delta_filter(cfg.topic_prefix, group)])
        if announcement is not None and key is not None:
            announce(link, cfg.topic_prefix, announcement, key)
        return collect(
            link,
            prefix=cfg.topic_prefix,
            spool=spool,
            registered=registered,
            deadline=now + timeout_s,
        )
