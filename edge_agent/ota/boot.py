"""Which model the agent starts on when it takes updates over the air, and boot counting.

Called once by the agent before it loads anything (``edge_agent.agent``). The pointer's
active slot if there is a pointer; else ``[model] bundle`` if set; else no model yet (the
agent waits for its first deployment). A model on probation is trusted less: every start
counts a boot (written before the model is loaded, so a crash while loading counts too);
more than ``[ota] max_boots`` of them, or a model that fails to load, rolls back to the
previous one before anything is scored (RAUC's boot counting). A model that fails to load
outside probation (its slot damaged on disk) falls back to the previous one, then to the
configured bundle, then to waiting: the agent always starts.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.bundle.manifest import MANIFEST_NAME
from edge_agent.config.model import AgentConfig
from edge_agent.events import iso
from edge_agent.fsutil import read_no_follow
from edge_agent.model_slot import ModelSlot
from edge_agent.ota.pointer import (
    NEW_SUFFIX,
    ModelSource,
    OtaPaths,
    Pointer,
    read_pointer,
    read_rejected,
    remember_rejected,
    write_pointer,
)

log = logging.getLogger("edge_agent.ota")


@dataclass(frozen=True)
class Startup:
    """What the agent starts on, and what happened to get there."""

    slot: ModelSlot | None  # None: waiting for a first deployment
    source: ModelSource | None
    pointer: Pointer | None
    rolled_back: str | None = None  # why the start rolled back, if it did
    rolled_back_version: str | None = None


def source_dir(cfg: AgentConfig, paths: OtaPaths, source: ModelSource | None) -> Path | None:
    if source is None:
        return None
    if source == "config":
        return cfg.model.bundle
    return paths.slot(source)


def open_source(cfg: AgentConfig, paths: OtaPaths, source: ModelSource) -> ModelSlot:
    """Verify and load the model of ``source``; raises on any failure."""
    where = source_dir(cfg, paths, source)
    if where is None:
        raise FileNotFoundError("[model] bundle is not set")
    return ModelSlot.open(
        where, cfg.model.trusted_keys, machine_id=cfg.machine_id, events=cfg.events,
        num_threads=cfg.model.threads,
    )


def start(cfg: AgentConfig, paths: OtaPaths) -> Startup:
    """Count the boot, roll back if needed, and load the model to start on."""
    paths.make()
    for leftover in paths.slots.glob(f"*{NEW_SUFFIX}"):
        shutil.rmtree(leftover, ignore_errors=True)  # a slot whose assembly a cut stopped
    pointer = read_pointer(paths)
    if pointer is None:
        source: ModelSource | None = "config" if cfg.model.bundle is not None else None
        return Startup(_try_open(cfg, paths, source), source, None)
    if pointer.state == "probation":
        pointer = pointer.model_copy(update={"boots": pointer.boots + 1})
        _write(paths, pointer, "count this start")
        if pointer.boots > cfg.ota.max_boots:
            why = (
                f"the agent started {pointer.boots} times while the model was on probation "
                f"(more than [ota] max_boots = {cfg.ota.max_boots}): crash loop"
            )
            return _roll_back(cfg, paths, pointer, why)
    if pointer.active is None:
        return Startup(None, None, pointer)
    try:
        slot = open_source(cfg, paths, pointer.active)
    except Exception as exc:
        if pointer.state == "probation":
            return _roll_back(cfg, paths, pointer, f"the new model failed to load at start: {exc}")
        log.error("the active model (%s) cannot be loaded: %s; trying the previous one",
                  pointer.active, exc)
        return _fall_back(cfg, paths, pointer)
    return Startup(slot, pointer.active, pointer)


def _roll_back(cfg: AgentConfig, paths: OtaPaths, pointer: Pointer, why: str) -> Startup:
    """Back to the previous model, before the one on probation is loaded (again)."""
    bad = pointer.active
    bad_version = slot_version(source_dir(cfg, paths, bad))
    if pointer.deployment_id is not None:
        try:
            remember_rejected(paths, pointer.deployment_id, read_rejected(paths))
        except OSError as err:
            log.error("cannot remember deployment %s as refused: %s", pointer.deployment_id, err)
    back = pointer.previous
    rolled = Pointer(
        active=back, previous=bad, state="active", boots=0, activated_at=iso(time.time()),
        floor=pointer.floor, floor_version=pointer.floor_version,
        deployment_id=pointer.previous_deployment_id, previous_deployment_id=None,
    )
    _write(paths, rolled, "record the rollback")  # the next start counts again if not
    log.error("rolling back from %s: %s", bad_version or bad, why)
    slot = _try_open(cfg, paths, back)
    return Startup(slot, back if slot is not None else None, rolled, why, bad_version)


def _write(paths: OtaPaths, pointer: Pointer, what: str) -> None:
    """Write the pointer; a disk that refuses must not keep the agent from starting."""
    try:
        write_pointer(paths, pointer)
    except OSError as err:
        log.error("cannot %s in %s: %s", what, paths.pointer, err)


def _fall_back(cfg: AgentConfig, paths: OtaPaths, pointer: Pointer) -> Startup:
    fallbacks: tuple[ModelSource | None, ...] = (pointer.previous, "config")
    for source in fallbacks:
        slot = _try_open(cfg, paths, source)
        if slot is not None:
            return Startup(slot, source, pointer)
    return Startup(None, None, pointer)


def _try_open(cfg: AgentConfig, paths: OtaPaths, source: ModelSource | None) -> ModelSlot | None:
    if source is None or source_dir(cfg, paths, source) is None:
        return None
    try:
        return open_source(cfg, paths, source)
    except Exception as exc:
        log.error("model from %s cannot be loaded: %s", source_dir(cfg, paths, source), exc)
        return None


def slot_version(where: Path | None) -> str | None:
    """The model version a bundle directory says it holds (unverified: for reports only)."""
    if where is None:
        return None
    try:
        doc = json.loads(read_no_follow(where, MANIFEST_NAME))
    except (OSError, ValueError):
        return None
    version = doc.get("model_version") if isinstance(doc, dict) else None
    return version if isinstance(version, str) else None
