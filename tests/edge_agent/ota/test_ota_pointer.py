"""The pointer and the start-up choice of model: A/B slot choice, the floor that never goes
down, the refused list, boot counting and the rollbacks it triggers, on real bundles."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from disk import fill

from edge_agent.config.model import AgentConfig
from edge_agent.ota import boot
from edge_agent.ota.pointer import (
    REJECTED_KEPT,
    OtaPaths,
    Pointer,
    higher_floor,
    read_pointer,
    read_rejected,
    remember_rejected,
    target_slot,
    write_pointer,
)

EARLY, LATE = "2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z"


def test_a_new_bundle_never_goes_to_the_active_slot() -> None:
    assert target_slot(None) == "a"
    assert target_slot(Pointer(active="a", state="active")) == "b"
    assert target_slot(Pointer(active="b", previous="a", state="active")) == "a"
    assert target_slot(Pointer(active="config", previous="a", state="active")) == "b"
    assert target_slot(Pointer(active=None, previous="b", state="active")) == "a"


def test_the_floor_only_goes_up() -> None:
    assert higher_floor((None, None), EARLY, "v1") == (EARLY, "v1")
    assert higher_floor((EARLY, "v1"), LATE, "v2") == (LATE, "v2")
    assert higher_floor((LATE, "v2"), EARLY, "v1") == (LATE, "v2")


def test_pointer_round_trip_and_a_damaged_one_is_set_aside(tmp_path: Path) -> None:
    paths = OtaPaths.under(tmp_path)
    assert read_pointer(paths) is None
    p = Pointer(active="a", previous="config", state="probation", floor=LATE, floor_version="v2")
    write_pointer(paths, p)
    assert read_pointer(paths) == p
    assert [f.name for f in paths.root.iterdir()] == ["pointer.json"]  # no temporary left
    paths.pointer.write_text("{not json")
    assert read_pointer(paths) is None
    assert paths.pointer.with_suffix(".corrupt").exists()


def test_the_refused_list_is_bounded_and_keeps_the_newest(tmp_path: Path) -> None:
    paths = OtaPaths.under(tmp_path)
    ids: list[str] = []
    for i in range(REJECTED_KEPT + 5):
        ids = remember_rejected(paths, f"d{i}", ids)
    assert read_rejected(paths) == ids
    assert len(ids) == REJECTED_KEPT
    assert ids[-1] == f"d{REJECTED_KEPT + 4}"
    assert "d0" not in ids


def install(paths: OtaPaths, slot: str, bundle: Path) -> None:
    paths.make()
    shutil.copytree(bundle, paths.slots / slot)


def test_start_without_a_pointer_uses_the_configured_bundle_or_waits(
    gateway_config: Callable[..., AgentConfig], bundle: Path
) -> None:
    s = boot.start(gateway_config(bundle=bundle), OtaPaths.under(gateway_config().state_dir))
    assert s.source == "config"
    assert s.slot is not None
    assert s.pointer is None
    cfg = gateway_config()
    s = boot.start(cfg, OtaPaths.under(cfg.state_dir))
    assert s.slot is None
    assert s.source is None


def test_start_follows_the_pointer_and_removes_a_half_built_slot(
    gateway_config: Callable[..., AgentConfig], bundle: Path, variants: dict[str, Path]
) -> None:
    cfg = gateway_config(bundle=bundle)
    paths = OtaPaths.under(cfg.state_dir)
    install(paths, "b", variants["newer"])
    (paths.slots / "a.new").mkdir()
    write_pointer(paths, Pointer(active="b", previous="config", state="active"))
    s = boot.start(cfg, paths)
    assert s.source == "b"
    assert s.slot is not None
    assert s.slot.version == "v-newer"
    assert not (paths.slots / "a.new").exists()


def test_boots_are_counted_on_probation_and_too_many_roll_back(
    gateway_config: Callable[..., AgentConfig], bundle: Path, variants: dict[str, Path]
) -> None:
    cfg = gateway_config(bundle=bundle, max_boots=2)
    paths = OtaPaths.under(cfg.state_dir)
    install(paths, "a", variants["newer"])
    write_pointer(paths, Pointer(active="a", previous="config", state="probation",
                                 floor=LATE, floor_version="v-newer", deployment_id="d-bad"))
    for boots in (1, 2):
        s = boot.start(cfg, paths)
        assert s.source == "a"
        assert s.rolled_back is None
        assert read_pointer(paths) == s.pointer
        assert s.pointer is not None
        assert s.pointer.boots == boots
    s = boot.start(cfg, paths)  # the third start while on probation: a crash loop
    assert s.source == "config"
    assert s.slot is not None
    assert s.rolled_back is not None
    assert "started 3 times" in s.rolled_back
    assert s.rolled_back_version == "v-newer"
    p = read_pointer(paths)
    assert p is not None
    assert p.active == "config"
    assert p.previous == "a"
    assert p.state == "active"
    assert p.floor == LATE  # the refused release stays refused
    assert "d-bad" in read_rejected(paths)


def test_a_model_on_probation_that_fails_to_load_rolls_back_at_once(
    gateway_config: Callable[..., AgentConfig], bundle: Path, variants: dict[str, Path]
) -> None:
    cfg = gateway_config(bundle=bundle)
    paths = OtaPaths.under(cfg.state_dir)
    install(paths, "a", bundle)
    install(paths, "b", variants["corrupt"])
    write_pointer(paths, Pointer(active="b", previous="a", state="probation"))
    s = boot.start(cfg, paths)
    assert s.source == "a"
    assert s.slot is not None
    assert s.rolled_back is not None
    assert "failed to load at start" in s.rolled_back


@pytest.mark.parametrize("previous", ["a", None])
def test_a_damaged_active_slot_falls_back_and_the_agent_still_starts(
    gateway_config: Callable[..., AgentConfig], bundle: Path, variants: dict[str, Path],
    previous: str | None,
) -> None:
    cfg = gateway_config(bundle=bundle)
    paths = OtaPaths.under(cfg.state_dir)
    install(paths, "a", variants["newer"])
    install(paths, "b", variants["newer"])
    (paths.slots / "b" / "forest.npz").write_bytes(b"rot")
    write_pointer(paths, Pointer(active="b", previous=previous, state="active"))  # type: ignore[arg-type]
    s = boot.start(cfg, paths)
    assert s.slot is not None
    assert s.source == (previous or "config")


def test_a_full_disk_does_not_keep_the_agent_from_starting(
    small_disk: Path, gateway_config: Callable[..., AgentConfig], bundle: Path,
    variants: dict[str, Path],
) -> None:
    cfg = gateway_config(bundle=bundle, state=small_disk / "state")
    paths = OtaPaths.under(cfg.state_dir)
    install(paths, "a", variants["newer"])
    write_pointer(paths, Pointer(active="a", previous="config", state="probation"))
    filler = fill(small_disk)
    s = boot.start(cfg, paths)  # the boot cannot be counted: said, and the model still loads
    assert s.slot is not None
    assert s.slot.version == "v-newer"
    p = read_pointer(paths)
    assert p is not None
    assert p.boots == 0
    filler.unlink()
