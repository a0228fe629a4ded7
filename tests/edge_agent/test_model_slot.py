"""The model slot: a verified bundle opened whole (cascade, pipeline, episode tracker), primed
with rows another model scored, and ended with ``close`` events of its own version."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from bundles import point_link, resigned_copy

from edge_agent.config.model import AgentConfig, EventsConfig
from edge_agent.data.table import read_table
from edge_agent.errors import BundleError, ConfigError
from edge_agent.model_slot import ModelSlot, slot_for_config, undelivered_channels
from export.keys import keygen

MACHINE = "press-7"
ROWS_BEFORE_SWAP = 400  # well into the fault-free start of the simulated plant
CHUNK_ROWS = 97  # pushes of an odd size, as the daemon's replay chunks come


def _open(bundle: Path, keys: list[Path]) -> ModelSlot:
    return ModelSlot.open(bundle, keys, machine_id=MACHINE, events=EventsConfig())


def _rows(sim_csv: Path, slot: ModelSlot) -> tuple[np.ndarray, np.ndarray]:
    t = read_table(sim_csv, channels=slot.channels).select(slot.channels)
    return t.timestamps, t.values


def test_open_builds_every_part_from_one_verified_bundle(bundle: Path, keys: Path) -> None:
    slot = _open(bundle, [keys / "signing.pub"])
    assert slot.digest == hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert slot.version == slot.manifest.model_version == slot.episodes.model_version
    assert slot.channels == slot.manifest.channel_names == slot.episodes.channels
    assert slot.episodes.machine_id == MACHINE
    stats = slot.training_stats
    assert stats.mean.shape == stats.scale.shape == (len(slot.channels),)
    assert (stats.scale > 0).all()
    learned = [(c.stuck_after, c.noisy_above, c.jump_above) for c in slot.manifest.channels]
    limits = stats.limits
    learned_again = zip(limits.stuck_after, limits.noisy_above, limits.jump_above, strict=True)
    assert list(learned_again) == learned
    assert all(None not in channel for channel in learned)  # noisy floats: judged


def test_open_accepts_a_second_trusted_key(bundle: Path, keys: Path, tmp_path: Path) -> None:
    new_key, new_pub = keygen(tmp_path / "new")
    rotated = resigned_copy(bundle, tmp_path / "rotated", new_key)
    assert _open(rotated, [keys / "signing.pub", new_pub]).version
    with pytest.raises(BundleError, match="signature does not match"):
        _open(rotated, [keys / "signing.pub"])


def test_prime_makes_the_next_row_score_in_a_full_window(
    bundle: Path, keys: Path, sim_csv: Path
) -> None:
    running = _open(bundle, [keys / "signing.pub"])
    ts, values = _rows(sim_csv, running)
    n = ROWS_BEFORE_SWAP
    window = running.manifest.window.length
    # A pipeline that has run since the primed rows began: adapting levels (the bundle's
    # trending channels) start at a model's first rows, so the primed model starts there too.
    reference = running.pipeline.push(ts[n - window : n + 1], values[n - window : n + 1])

    primed = _open(bundle, [keys / "signing.pub"])
    primed.prime(ts[n - window : n], values[n - window : n])
    after = primed.pipeline.push(ts[n : n + 1], values[n : n + 1])
    assert after.size == 1
    assert after.row_window[0] >= 0  # the first row after the swap has its window
    assert after.end_time[0] == reference.end_time[-1] == ts[n]
    assert after.score[0] == reference.score[-1]  # the same full window, the same score
    assert after.stage[0] == reference.stage[-1]
    assert primed.episodes.open_episode is None

    cold = _open(bundle, [keys / "signing.pub"])
    assert cold.pipeline.push(ts[n : n + 1], values[n : n + 1]).size == 0  # unprimed: nothing


def test_warm_up_leaves_the_slot_pipeline_empty(bundle: Path, keys: Path, sim_csv: Path) -> None:
    slot = _open(bundle, [keys / "signing.pub"])
    slot.warm_up()
    slot.warm_up()  # once per slot
    ts, values = _rows(sim_csv, slot)
    assert slot.pipeline.push(ts[:1], values[:1]).size == 0


def test_close_episodes_ends_the_open_episode_as_this_model(
    bundle: Path, keys: Path, sim_csv: Path
) -> None:
    slot = _open(bundle, [keys / "signing.pub"])
    ts, values = _rows(sim_csv, slot)
    events = []
    last_end = 0.0
    for a in range(0, ts.shape[0], CHUNK_ROWS):
        batch = slot.pipeline.push(ts[a : a + CHUNK_ROWS], values[a : a + CHUNK_ROWS])
        events += slot.episodes.update(batch, 0.0)
        last_end = float(batch.end_time[-1]) if batch.size else last_end
        if slot.episodes.open_episode is not None:
            break
    opened = slot.episodes.open_episode
    assert opened is not None, "the simulated plant has faults: an episode opens"
    opening = [e for e in events if e.state == "open"]
    assert len(opening) == 1
    assert opening[0].episode == opened

    closed = slot.close_episodes(1234.5, "model a replaced by b (test)")
    assert len(closed) == 1
    e = closed[0]
    assert (e.kind, e.state, e.episode) == ("anomaly", "close", opened)
    assert e.model_version == slot.version
    assert e.end == last_end  # the last window this model scored
    assert e.start == opening[0].start
    assert e.created == 1234.5
    assert e.detail is not None
    assert e.detail.endswith("closed early: model a replaced by b (test)")
    assert slot.episodes.open_episode is None
    assert slot.close_episodes(1235.0, "again") == []


def _config(bundle: Path | None, keys: Path, **model: object) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "machine_id": MACHINE,
            "model": {"bundle": bundle, "trust_key": keys / "signing.pub", **model},
            "sources": [{"type": "replay", "path": "plant.csv"}],
        }
    )


def test_slot_for_config_keeps_the_running_slot_until_the_bundle_changes(
    bundle: Path, keys: Path, tmp_path: Path
) -> None:
    other = resigned_copy(bundle, tmp_path / "b", keys / "signing.key", {"model_version": "b"})
    current = tmp_path / "current"
    point_link(current, bundle)
    first = slot_for_config(_config(current, keys))
    assert slot_for_config(_config(current, keys), first) is first  # same digest, settings
    assert slot_for_config(_config(current, keys, threads=2), first) is not first
    point_link(current, other)
    swapped = slot_for_config(_config(current, keys), first)
    assert swapped is not first
    assert swapped.version == "b"
    assert swapped.digest != first.digest
    with pytest.raises(ConfigError, match=r"\[model\] bundle is not set"):
        slot_for_config(_config(None, keys))


def test_undelivered_channels(bundle: Path, keys: Path) -> None:
    slot = _open(bundle, [keys / "signing.pub"])
    assert undelivered_channels(slot.manifest, _config(bundle, keys)) == []  # replay: the file
    live = AgentConfig.model_validate(
        {
            "machine_id": MACHINE,
            "model": {"bundle": bundle, "trust_key": keys / "signing.pub"},
            "sources": [
                {
                    "type": "serial_line",
                    "name": "mcu",
                    "port": "/dev/ttyUSB0",
                    "format": "csv",
                    "columns": slot.channels[1:],
                }
            ],
        }
    )
    assert undelivered_channels(slot.manifest, live) == slot.channels[:1]


@pytest.mark.parametrize("part", ["envelope", "residual"])
def test_a_manifest_that_misstates_the_screen_parts_is_refused(
    bundle: Path, keys: Path, tmp_path: Path, part: str
) -> None:
    """A threshold set on one kind of screen score, compared with another, would pass every
    window or none: a bundle whose manifest and forest file disagree does not open."""
    has = getattr(_open(bundle, [keys / "signing.pub"]).manifest.forest, part)
    assert has  # trainer fit's default
    wrong = resigned_copy(
        bundle, tmp_path / "wrong", keys / "signing.key", {f"forest.{part}": not has}
    )
    with pytest.raises(BundleError, match=f"{part}=false, but the forest file carries"):
        _open(wrong, [keys / "signing.pub"])
