"""Steps 2 to 4 of an update: a complete download becomes a slot, is verified, canaried and
switched to.

Called by the updater's thread (``edge_agent.ota.updater``) once every chunk is held. The
slot is assembled and checked (``edge_agent.ota.assemble``, ``edge_agent.ota.checks``), the
candidate is loaded and judged on the agent's recent rows (``edge_agent.ota.canary``), and
the pointer is written: new slot active, on probation, floor raised, previous slot kept as the
rollback target. Only then is the loaded model handed to the main loop. A refusal at any step
is reported with its reason and leaves the running model and the pointer as they were.
"""

from __future__ import annotations

import contextlib
import logging
import time

from edge_agent.events import iso
from edge_agent.model_slot import ModelSlot
from edge_agent.ota.assemble import assemble
from edge_agent.ota.canary import History, judge
from edge_agent.ota.checks import verify_slot
from edge_agent.ota.download import Download
from edge_agent.ota.ledger import Handover, Ledger, disk_reason
from edge_agent.ota.pointer import Pointer, clear_attempts, count_attempt, higher_floor
from edge_agent.ota.protocol import DeploymentError

log = logging.getLogger("edge_agent.ota")

# Agent starts that may end while this model is loaded or canaried (a power cut, a restart)
# before it is refused as one that crashes the agent.
MAX_CANARY_ATTEMPTS = 3


def install(ledger: Ledger, job: Download, history: History | None) -> Handover | None:
    """Verify, canary and switch to the downloaded bundle; the model to swap in, or None if
    it was rejected (reported). Staging is removed either way."""
    try:
        return _install(ledger, job, history)
    finally:
        job.staging.remove()
        with contextlib.suppress(OSError):
            clear_attempts(ledger.paths)


def _install(ledger: Ledger, job: Download, history: History | None) -> Handover | None:
    dep = job.deployment
    new = _candidate(ledger, job)
    if new is None:
        return None
    # Personalisation (edge_agent.learn): the candidate's local threshold, before it is judged.
    local = {} if ledger.personaliser is None else ledger.personaliser.calibrate(new)
    verdict = judge(new, ledger.second_copy(), history, ledger.cfg.ota)
    verdict.figures.update(local)
    log.info("deployment %s canary: %s", dep.deployment_id, verdict.figures)
    if not verdict.passed:
        ledger.reject(dep, verdict.reason or "canary failed", canary=verdict.figures)
        return None
    old = ledger.pointer
    floor = higher_floor(ledger.floor(), new.manifest.created_at, new.version)
    pointer = Pointer(
        active=job.target, previous=ledger.source, state="probation", boots=0,
        activated_at=iso(time.time()), floor=floor[0], floor_version=floor[1],
        deployment_id=dep.deployment_id,
        previous_deployment_id=None if old is None else old.deployment_id,
    )
    try:
        ledger.write_pointer(pointer)  # the switch: from here a restart runs the new model
    except OSError as exc:
        ledger.reject(dep, disk_reason(exc), lasting=False)
        return None
    log.info("switched to %s (slot %s), on probation", new.version, job.target)
    return Handover(new, f"over-the-air update, deployment {dep.deployment_id}", "update",
                    dep.deployment_id, verdict.figures)


def _candidate(ledger: Ledger, job: Download) -> ModelSlot | None:
    """The slot built, verified, loaded and run once; None if refused (reported)."""
    dep = job.deployment
    cfg = ledger.cfg
    ledger.publish("verifying", deployment_id=dep.deployment_id, candidate=dep.model_version,
                   progress=job.progress())
    try:
        slot_dir = assemble(ledger.paths, job.target, job.staging, job.local)
        bundle = verify_slot(slot_dir, dep, cfg.model.trusted_keys, ledger.gateway())
    except DeploymentError as exc:
        ledger.reject(dep, str(exc))
        return None
    except OSError as exc:
        ledger.reject(dep, disk_reason(exc), lasting=False)
        return None
    ledger.publish("canary", deployment_id=dep.deployment_id, candidate=dep.model_version)
    try:
        attempts = count_attempt(ledger.paths, dep.deployment_id)
    except OSError as exc:
        ledger.reject(dep, disk_reason(exc), lasting=False)
        return None
    if attempts > MAX_CANARY_ATTEMPTS:
        ledger.reject(dep, f"canary: the agent stopped {attempts - 1} times while loading or "
                      "checking this model (does it crash the agent?)")
        return None
    step = "load"
    try:
        new = ModelSlot.from_verified(
            bundle, machine_id=cfg.machine_id, events=cfg.events, num_threads=cfg.model.threads,
        )
        step = "run"
        new.warm_up()  # allocates and invokes the interpreter once
    except Exception as exc:
        ledger.reject(dep, f"canary: the model fails to {step}: {exc}")
        return None
    return new
