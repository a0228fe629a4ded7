"""The updater in this process against a real Mosquitto, with the real outbox and uplink (its
downlink subscribes, its outbox publishes the retained reports); the test plays the agent's
main loop: it scores plant rows with the running model, hands them to the updater and swaps
in what the updater hands over.

Publish → downloading, verifying, canary, probation, active; a restart mid-download resumes
from staging; a tampered chunk, a bundle for another machine and a model that cannot load are
rejected with the old model still running; a model that alerts on everything passes a canary
of 0 s and is rolled back in probation; a first deployment is taken without any model; a
deployment that arrives during probation waits for its end.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from broker import Mosquitto, Received, Subscriber
from disk import fill
from ota_desk import MACHINE, PREFIX, Desk, created_at
from waiting import wait_for

from edge_agent.config.model import AgentConfig
from edge_agent.data.table import SensorTable
from edge_agent.deliver.mqtt import MqttUplink
from edge_agent.deliver.outbox import Outbox
from edge_agent.model_slot import ModelSlot
from edge_agent.ota import boot
from edge_agent.ota.pointer import OtaPaths, read_pointer, read_rejected
from edge_agent.ota.protocol import (
    group_deployment_topic,
    machine_deployment_topic,
    report_topic,
)
from edge_agent.ota.report import Reporter
from edge_agent.ota.updater import Updater

WAIT_S = 60.0
ROWS_PER_TURN = 5
CHANNELS = ["pressure_bar", "motor_current_a", "oil_temp_c", "flow_m3min", "vibration_rms_mms"]


class Gateway:
    """One gateway's update machinery; :meth:`turn` is one turn of the agent's main loop."""

    def __init__(self, cfg: AgentConfig, plant: SensorTable) -> None:
        assert cfg.mqtt is not None
        self.cfg = cfg
        self.paths = OtaPaths.under(cfg.state_dir)
        self.startup = boot.start(cfg, self.paths)
        self.model: ModelSlot | None = self.startup.slot
        self.outbox = Outbox(cfg.state_dir / "events.db", cfg.outbox, deliver=True)
        self.uplink = MqttUplink(cfg.mqtt, cfg.machine_id, self.outbox, lambda: {})
        reporter = Reporter(cfg.machine_id, cfg.ota.groups, self.outbox, self.uplink.wake)
        self.updater = Updater(cfg, self.startup, reporter)
        self.uplink.start()
        self.updater.start(self.uplink)
        table = plant.select(CHANNELS)
        self.ts, self.rows = np.array(table.timestamps), np.array(table.values)
        self.at = 0
        self.swaps: list[str] = []
        self.closed = False

    def turn(self) -> None:
        """Score a few rows, give them to the updater, swap in what it hands over."""
        h = self.updater.take_ready()
        if h is not None:
            h.slot.warm_up()
            self.model = h.slot
            self.updater.swapped(h)
            self.swaps.append(h.slot.version)
        if self.model is None:
            return
        a, b = self.at, self.at + ROWS_PER_TURN
        self.at = b % (self.ts.shape[0] - ROWS_PER_TURN)
        cols = [CHANNELS.index(c) for c in self.model.channels]
        rows = self.rows[a:b][:, cols]
        batch = self.model.pipeline.push(self.ts[a:b], rows)
        self.updater.record(self.ts[a:b], rows, batch)

    def run_until(self, cond: Callable[[], bool], timeout: float = WAIT_S) -> None:
        def step() -> bool:
            self.turn()
            return cond()

        assert wait_for(step, timeout), "timed out"

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.updater.stop()
        self.uplink.stop(drain_timeout_s=2.0)
        self.outbox.close()


@pytest.fixture
def reports(mosquitto: Mosquitto) -> Iterator[Subscriber]:
    with Subscriber(mosquitto.port, report_topic(PREFIX, MACHINE)) as sub:
        yield sub


@pytest.fixture
def desk(mosquitto: Mosquitto, keys: Path) -> Iterator[Desk]:
    d = Desk(mosquitto.port, keys / "signing.key")
    yield d
    d.close()


@pytest.fixture
def gateway(
    mosquitto: Mosquitto, gateway_config: Callable[..., AgentConfig], plant: SensorTable
) -> Iterator[Callable[..., Gateway]]:
    made: list[Gateway] = []

    def make(**kw: Any) -> Gateway:
        g = Gateway(gateway_config(port=mosquitto.port, **kw), plant)
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()


def states(reports: Subscriber) -> list[str]:
    return [m.json()["state"] for m in reports.messages]


def chunks_in(staged: Path) -> set[str]:
    """The whole chunks in a staging folder (a chunk is written to a dot-file, then renamed)."""
    return {p.name for p in staged.iterdir() if not p.name.startswith(".")}


def wait_state(reports: Subscriber, state: str, gw: Gateway, after: int = 0) -> dict[str, Any]:
    """The first report in ``state`` after the first ``after`` ones, driving the main loop
    meanwhile."""
    gw.run_until(lambda: state in states(reports)[after:])
    found: Received = next(m for m in reports.messages[after:] if m.json()["state"] == state)
    data: dict[str, Any] = found.json()
    return data


def publish(desk: Desk, bundle: Path, **kw: Any) -> str:
    dep, chunks = desk.deployment(bundle, **kw)
    desk.chunks(chunks)
    desk.order(machine_deployment_topic(PREFIX, MACHINE), dep)
    return dep.deployment_id


def test_publish_to_active_through_every_step(
    gateway: Callable[..., Gateway], desk: Desk, reports: Subscriber, bundle: Path,
    variants: dict[str, Path],
) -> None:
    gw = gateway(bundle=bundle, canary_s=120, probation_s=1)
    gw.run_until(lambda: gw.at >= 300 and states(reports) == ["active"])  # the canary's rows
    dep_id = publish(desk, variants["newer"])
    done = wait_state(reports, "active", gw, after=1)
    assert states(reports)[1] == "downloading"
    seq = [s for s in states(reports) if s != "downloading"]
    assert seq == ["active", "verifying", "canary", "probation", "active"]
    assert done["active"] == "v-newer"
    assert done["deployment_id"] == dep_id
    probation = [m.json() for m in reports.messages if m.json()["state"] == "probation"][-1]
    assert probation["canary"]["mode"] == "scored"
    assert probation["canary"]["windows"] > 0
    assert gw.swaps == ["v-newer"]
    p = read_pointer(gw.paths)
    assert p is not None
    assert (p.active, p.state, p.previous, p.floor) == (
        "a", "active", "config", created_at(variants["newer"]))
    assert not any(gw.paths.staging.iterdir())
    events = gw.outbox.recent(50, "model_update")
    assert [e.state for e in reversed(events)][-4:] == ["verifying", "canary", "probation",
                                                        "active"]


def test_a_tampered_chunk_is_rejected_and_the_old_model_keeps_running(
    gateway: Callable[..., Gateway], desk: Desk, reports: Subscriber, bundle: Path,
    variants: dict[str, Path],
) -> None:
    gw = gateway(bundle=bundle, canary_s=0)
    dep, chunks = desk.deployment(variants["newer"])
    # The manifest is new (the model files are the running bundle's: never downloaded).
    manifest = dep.files["manifest.json"].sha256
    topic = next(t for t in chunks if f"/{manifest}/" in t)
    bad = bytearray(chunks[topic])
    bad[0] ^= 0xFF
    chunks[topic] = bytes(bad)
    desk.chunks(chunks)
    desk.order(machine_deployment_topic(PREFIX, MACHINE), dep)
    got = wait_state(reports, "rejected", gw)
    assert "chunk 0 of manifest.json does not match its SHA-256" in got["reason"]
    assert got["active"] == gw.startup.slot.version  # type: ignore[union-attr]
    assert gw.swaps == []
    assert read_pointer(gw.paths) is None
    assert dep.deployment_id in read_rejected(gw.paths)
    assert not any(gw.paths.staging.iterdir())


def test_for_another_machine_and_a_model_that_cannot_load_are_rejected(
    gateway: Callable[..., Gateway], desk: Desk, reports: Subscriber, bundle: Path,
    variants: dict[str, Path],
) -> None:
    gw = gateway(bundle=bundle, canary_s=0)
    dep, _chunks = desk.deployment(variants["newer"], machines=("press-8",))
    desk.order(machine_deployment_topic(PREFIX, MACHINE), dep)
    got = wait_state(reports, "rejected", gw)
    assert "not this machine (press-7" in got["reason"]
    publish(desk, variants["corrupt"])
    gw.run_until(lambda: states(reports).count("rejected") == 2)
    last = reports.messages[-1].json()
    assert last["reason"].startswith("canary: the model fails to load")
    assert last["candidate"] == "v-corrupt"
    assert gw.swaps == []


def test_a_restart_mid_download_resumes_from_staging(
    gateway: Callable[..., Gateway], desk: Desk, reports: Subscriber, bundle: Path,
    variants: dict[str, Path],
) -> None:
    gw = gateway(canary_s=0, probation_s=0)  # no model yet: every file is downloaded
    dep, chunks = desk.deployment(variants["alerting"], chunk_bytes=16 * 1024)
    forest = dep.files["forest.npz"]
    first = {t: p for t, p in chunks.items() if f"/{forest.sha256}/" not in t}
    desk.chunks(first)
    desk.order(machine_deployment_topic(PREFIX, MACHINE), dep)
    staged = gw.paths.staging / dep.deployment_id
    gw.run_until(lambda: staged.is_dir() and len(chunks_in(staged)) >= 2)
    gw.close()
    held = chunks_in(staged)  # a chunk being written when the agent stopped is not one

    again = gateway(canary_s=0, probation_s=0)  # the agent restarted
    again.run_until(lambda: len(reports.messages) > 0 and states(reports)[-1] == "downloading")
    assert held <= chunks_in(staged)
    desk.chunks({t: p for t, p in chunks.items() if t not in first})
    wait_state(reports, "active", again)
    assert again.swaps == ["v-alerting"]


def test_an_alerting_model_passes_a_zero_canary_and_is_rolled_back_in_probation(
    gateway: Callable[..., Gateway], desk: Desk, reports: Subscriber, bundle: Path,
    variants: dict[str, Path],
) -> None:
    gw = gateway(bundle=bundle, canary_s=0, probation_s=600)
    dep_id = publish(desk, variants["alerting"])
    got = wait_state(reports, "rolled_back", gw)
    assert got["active"] == gw.startup.slot.version  # type: ignore[union-attr]
    assert "in probation, over [ota] probation_max_alert_share" in got["reason"]
    assert gw.swaps == ["v-alerting", gw.startup.slot.version]  # type: ignore[union-attr]
    p = read_pointer(gw.paths)
    assert p is not None
    assert (p.active, p.state, p.previous) == ("config", "active", "a")
    assert p.floor == created_at(variants["alerting"])  # the bad release stays refused
    assert dep_id in read_rejected(gw.paths)


def test_a_first_deployment_without_any_model_and_one_waiting_for_probation(
    gateway: Callable[..., Gateway], desk: Desk, reports: Subscriber,
    variants: dict[str, Path],
) -> None:
    gw = gateway(canary_s=60, probation_s=3)
    wait_state(reports, "waiting", gw)
    assert reports.messages[-1].json()["active"] is None
    publish(desk, variants["newer"])
    wait_state(reports, "probation", gw)
    probation = reports.messages[-1].json()
    assert probation["canary"]["note"] == "no running model"
    publish(desk, variants["newest"])  # arrives during probation: waits for its end
    gw.run_until(lambda: states(reports).count("probation") == 2)
    assert gw.swaps == ["v-newer", "v-newest"]
    seen = states(reports)
    newest_download = len(seen) - 1 - seen[::-1].index("downloading")
    assert seen.index("active") < newest_download  # v-newer marked good before v-newest came
    p = read_pointer(gw.paths)
    assert p is not None
    assert (p.active, p.previous) == ("b", "a")


def test_a_full_disk_rejects_the_update_not_the_agent(
    small_disk: Path, gateway: Callable[..., Gateway], desk: Desk, reports: Subscriber,
    bundle: Path, variants: dict[str, Path],
) -> None:
    gw = gateway(bundle=bundle, state=small_disk / "state", canary_s=0)
    wait_state(reports, "active", gw)
    filler = fill(small_disk)
    dep_id = publish(desk, variants["newer"])
    got = wait_state(reports, "rejected", gw, after=1)
    assert got["reason"].startswith("disk full: the update needs")
    assert dep_id not in read_rejected(gw.paths)  # tried again once there is room
    assert gw.swaps == []
    gw.run_until(lambda: gw.at >= 50)  # the old model goes on scoring
    gw.close()
    filler.unlink()


def test_the_running_model_deployed_again_is_reported_active(
    gateway: Callable[..., Gateway], desk: Desk, reports: Subscriber, bundle: Path,
    variants: dict[str, Path],
) -> None:
    gw = gateway(bundle=bundle, canary_s=0)
    dep, _ = desk.deployment(variants["newer"], machines=("press-8",))
    desk.order(machine_deployment_topic(PREFIX, MACHINE), dep)
    wait_state(reports, "rejected", gw)
    dep_id = publish(desk, bundle)
    got = wait_state(reports, "active", gw, after=2)
    assert got["deployment_id"] == dep_id
    assert got["active"] == gw.startup.slot.version  # type: ignore[union-attr]
    assert gw.swaps == []


def test_a_deployment_to_one_of_its_groups_is_taken(
    gateway: Callable[..., Gateway], desk: Desk, reports: Subscriber, bundle: Path,
    variants: dict[str, Path],
) -> None:
    gw = gateway(bundle=bundle, canary_s=0, probation_s=0, groups=["line-2"])
    other, _ = desk.deployment(variants["older"], machines=(), groups=("line-3",))
    desk.order(group_deployment_topic(PREFIX, "line-3"), other)  # not subscribed: never seen
    dep, chunks = desk.deployment(variants["newer"], machines=(), groups=("line-2",))
    desk.chunks(chunks)
    desk.order(group_deployment_topic(PREFIX, "line-2"), dep)
    done = wait_state(reports, "active", gw, after=1)
    assert done["deployment_id"] == dep.deployment_id
    assert done["groups"] == ["line-2"]
    assert gw.swaps == ["v-newer"]
    assert "rejected" not in states(reports)


def test_a_broker_restart_mid_download_resumes(
    mosquitto: Mosquitto, gateway: Callable[..., Gateway], desk: Desk, reports: Subscriber,
    bundle: Path, variants: dict[str, Path],
) -> None:
    gw = gateway(bundle=bundle, canary_s=0, probation_s=0)
    dep, chunks = desk.deployment(variants["newer"], chunk_bytes=1024)
    manifest = dep.files["manifest.json"].sha256
    later = {t: p for t, p in chunks.items() if f"/{manifest}/" in t and not t.endswith("/0")}
    desk.chunks({t: p for t, p in chunks.items() if t not in later})
    desk.order(machine_deployment_topic(PREFIX, MACHINE), dep)
    staged = gw.paths.staging / dep.deployment_id
    gw.run_until(lambda: staged.is_dir() and any(staged.iterdir()))
    mosquitto.restart()  # retained messages survive (persistence), connections do not
    assert wait_for(lambda: gw.uplink.connected, 30)
    assert wait_for(desk.client.is_connected, 30)
    desk.chunks(later)
    done = wait_state(reports, "active", gw, after=1)
    assert done["deployment_id"] == dep.deployment_id
    assert gw.swaps == ["v-newer"]


def test_a_model_the_agent_keeps_dying_on_is_refused_at_canary(
    gateway: Callable[..., Gateway], desk: Desk, reports: Subscriber, bundle: Path,
    variants: dict[str, Path],
) -> None:
    gw = gateway(bundle=bundle, canary_s=0)
    dep, chunks = desk.deployment(variants["newer"])
    # Three earlier starts died while this deployment was at its canary.
    gw.paths.canary.write_text(json.dumps({"deployment_id": dep.deployment_id, "attempts": 3}))
    desk.chunks(chunks)
    desk.order(machine_deployment_topic(PREFIX, MACHINE), dep)
    got = wait_state(reports, "rejected", gw, after=1)
    assert "the agent stopped 3 times while loading or checking this model" in got["reason"]
    assert gw.swaps == []
    assert not gw.paths.canary.exists()
