"""Step 5 of an update, its end: mark the new model good, or roll back to the previous one.

Called by the updater's thread (``edge_agent.ota.updater``) when
:meth:`~edge_agent.ota.probation.Probation.verdict` decides. Marking good is one pointer
write (state ``active``, boots reset). A rollback loads the previous slot first, then writes
the pointer back to it (floor unchanged: the bad release stays refused, and its deployment is
remembered as refused), and only then hands the loaded model to the main loop; a power cut
in between restarts on the previous model already. With nothing to go back to (the first
model this gateway ever had, or a previous slot that no longer loads) the new model is kept
running, since a machine with no model is watched by nobody, and the report says why.
"""

from __future__ import annotations

import logging
import time

from edge_agent.events import iso
from edge_agent.model_slot import ModelSlot
from edge_agent.ota.ledger import Handover, Ledger
from edge_agent.ota.pointer import Pointer

log = logging.getLogger("edge_agent.ota")


def mark_good(ledger: Ledger, summary: str) -> None:
    pointer = ledger.pointer
    if pointer is not None:
        ledger.write_pointer(pointer.model_copy(update={"state": "active", "boots": 0}))
    ledger.publish("active", reason=f"marked good after {summary}",
                   deployment_id=None if pointer is None else pointer.deployment_id)


def roll_back(ledger: Ledger, why: str) -> Handover | None:
    """Back to the previous model: the one to swap in, or None if the new one is kept."""
    pointer = ledger.pointer
    back = None if pointer is None else pointer.previous
    slot: ModelSlot | None = None
    problem = "there is no previous model"
    if back is not None:
        try:
            slot = ledger.open(back)
            slot.warm_up()
        except Exception as exc:
            slot, problem = None, f"the previous model cannot be loaded: {exc}"
    if pointer is None or slot is None:
        log.error("probation failed (%s) but %s: keeping the new model", why, problem)
        if pointer is not None:
            ledger.write_pointer(pointer.model_copy(update={"state": "active", "boots": 0}))
        ledger.publish("active", reason=f"rollback wanted ({why}) but {problem}")
        return None
    bad = pointer.deployment_id
    ledger.write_pointer(Pointer(
        active=back, previous=pointer.active, state="active", boots=0,
        activated_at=iso(time.time()), floor=pointer.floor, floor_version=pointer.floor_version,
        deployment_id=pointer.previous_deployment_id, previous_deployment_id=bad,
    ))
    ledger.remember(bad)
    log.error("rolling back from %s to %s: %s", ledger.version, slot.version, why)
    return Handover(slot, f"rollback: {why}", "rollback", bad, why=why)


def undo_switch(ledger: Ledger, h: Handover, err: BaseException) -> None:
    """The main loop could not swap ``h`` in: point back to the running model, refuse it."""
    pointer = ledger.pointer
    if h.kind == "update" and pointer is not None:
        ledger.write_pointer(Pointer(
            active=pointer.previous, previous=pointer.active, state="active", boots=0,
            activated_at=iso(time.time()), floor=pointer.floor,
            floor_version=pointer.floor_version, deployment_id=pointer.previous_deployment_id,
        ))
        ledger.remember(h.deployment_id)
        ledger.publish("rejected", reason=f"the model could not be swapped in: {err}",
                       deployment_id=h.deployment_id, candidate=h.slot.version)
