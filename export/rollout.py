"""``export publish``, the rollout: chunks, then deployments wave by wave, watched to the end.

Sits on the desk; drives :mod:`export.publish` (what to send), :mod:`export.broker` (the
connection) and :mod:`export.progress` (what the gateways report). The order is fixed:
subscribe to the reports first (their retained copies tell a group's members, and no
transition of this publish can be missed), publish every chunk and wait for its PUBACK, and
only then publish a deployment that names them.

Staged rollouts: ``wave`` machines at a time get their own deployment; the next wave starts
when every machine of the current one has a final answer (``active``, ``rejected`` or
``rolled_back``). With ``halt_on_rollback`` the first failure stops the rollout there: the
machines of later waves are left untouched (nothing is published for them). A wave that times
out stops the rollout too: its outcome is unknown.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.ota.protocol import reports_filter
from export.broker import DeskLink
from export.errors import ExportError
from export.progress import Tracker
from export.publish import (
    Order,
    Release,
    chunk_messages,
    group_deployment,
    machine_deployments,
)

POLL_S = 0.5  # how often the wait looks at the connection while no report arrives
BYTES_PER_KIB = 1024


@dataclass(frozen=True)
class Plan:
    prefix: str
    machines: tuple[str, ...]  # explicit targets; empty when ``group`` is given
    group: str | None
    wave: int | None  # machines per wave; None: all at once
    halt_on_rollback: bool
    timeout_s: float  # per wave (the whole publish without waves)
    wait: bool
    discover_s: float  # the longest wait for the retained reports


def waves_of(machines: list[str], size: int | None) -> list[list[str]]:
    step = size or max(1, len(machines))
    return [machines[i : i + step] for i in range(0, len(machines), step)]


def wait_for(
    link: DeskLink, tracker: Tracker, machines: list[str] | None, plan: Plan
) -> str | None:
    """Feed reports to ``tracker`` until ``machines`` (None: all its targets) are finished;
    the reason the wait ended early (``halted``, ``timed out``, ``lost the broker``) or None."""
    deadline = time.monotonic() + plan.timeout_s
    while True:
        watched = list(tracker.targets) if machines is None else machines
        failed = tracker.failed(watched)
        if plan.halt_on_rollback and failed:
            first = failed[0]
            return f"halted: {first.machine} {first.shown}"
        if tracker.finished(watched):
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            return f"timed out after {plan.timeout_s:g} s"
        if (lost := link.lost) is not None:
            return f"lost the broker {link.where}: {lost}"
        try:
            msg = link.inbox.get(timeout=min(left, POLL_S))
        except queue.Empty:
            continue
        tracker.feed(msg.topic, msg.payload)


def rollout(
    link: DeskLink,
    release: Release,
    key: Ed25519PrivateKey,
    order: Order,
    plan: Plan,
    out: TextIO,
) -> int:
    """Publish ``release`` as ``plan`` says and follow it; the exit code (0: all active)."""
    tracker = Tracker(plan.prefix, order.deployment_id, release.model_version, out)
    for topic, payload in link.retained(
        [reports_filter(plan.prefix)], max_wait_s=plan.discover_s
    ).items():
        tracker.feed(topic, payload)
    sent = link.publish(chunk_messages(plan.prefix, release, order.chunk_bytes))
    print(
        f"model {release.model_version}: {len(release.files)} files, "
        f"{sent / BYTES_PER_KIB:.1f} KiB retained under {plan.prefix}/ota/blob/; "
        f"deployment {order.deployment_id}",
        file=out, flush=True,
    )
    if plan.group is not None and plan.wave is None:
        return _to_group(link, release, key, order, plan, tracker, out)
    targets = list(plan.machines) if plan.group is None else tracker.members(plan.group)
    if not targets:
        raise ExportError(
            f"group {plan.group!r}: no machine on {reports_filter(plan.prefix)} reports being "
            "in it, so it cannot be rolled out in waves (drop --wave to publish to the group)"
        )
    waves = waves_of(targets, plan.wave)
    stopped: str | None = None
    for n, wave in enumerate(waves, 1):
        if len(waves) > 1:
            print(f"wave {n}/{len(waves)}: {', '.join(wave)}", file=out, flush=True)
        todo = [m for m in wave if not tracker.already_active(m)]
        for m in wave:
            tracker.watch(m)  # prints "active ..." for one that already runs this version
        link.publish(machine_deployments(plan.prefix, release, order, key, todo))
        if not plan.wait:
            print(_no_wait(plan, f"{len(todo)} machine deployment(s)"), file=out)
            return 0
        stopped = wait_for(link, tracker, wave, plan)
        if stopped is not None:
            not_sent = [m for w in waves[n:] for m in w]
            return tracker.summary(not_sent, stopped)
    return tracker.summary([], stopped)


def _to_group(
    link: DeskLink,
    release: Release,
    key: Ed25519PrivateKey,
    order: Order,
    plan: Plan,
    tracker: Tracker,
    out: TextIO,
) -> int:
    assert plan.group is not None
    topic, payload = group_deployment(plan.prefix, release, order, key, plan.group)
    link.publish([(topic, payload)])
    members = tracker.members(plan.group)
    print(
        f"group {plan.group}: deployment on {topic}; members known: "
        f"{', '.join(members) or 'none yet'}",
        file=out, flush=True,
    )
    if not plan.wait:
        print(_no_wait(plan, "the group deployment"), file=out)
        return 0
    if not members:
        print(
            f"no machine reports being in group {plan.group} yet: nothing to wait for; the "
            "deployment stays retained for the members that come online",
            file=out,
        )
        return 0
    tracker.follow_group(plan.group)
    return tracker.summary([], wait_for(link, tracker, None, plan))


def _no_wait(plan: Plan, what: str) -> str:
    return (
        f"published {what}; not waiting (--no-wait): follow it with "
        f"`python -m export fleet --topic-prefix {plan.prefix} --broker ...`"
    )
