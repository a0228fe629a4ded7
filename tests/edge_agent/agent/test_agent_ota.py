"""Over-the-air updates end to end: real agent processes as systemd runs them, a real
Mosquitto, real bundles published with the desk's own ``export publish``.

- ``export publish`` takes a new bundle to a running agent, which reports every step and ends
  ``active``; ``export fleet`` shows it; a restart starts on the new model.
- First boot without a model: READY says it waits, sources are polled, the first deployment
  is activated.
- SIGKILL mid-download, during the canary, right after the switch and twice on probation:
  every restart runs a complete model (the old or the new one, never none); a model that keeps
  the agent from staying up through probation is rolled back by boot counting.
- A model that alerts on everything passes a canary of 0 s and is rolled back in probation.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_support import AgentProcess, replay_source
from broker import Mosquitto, Received, Subscriber, free_port
from ota_desk import Desk, alert_everything, variant

from edge_agent.config.load import load_config
from edge_agent.ota.pointer import OtaPaths, read_pointer
from edge_agent.ota.protocol import machine_deployment_topic
from edge_agent.simulate import run_simulate
from export.cli import main as export_main

MACHINE = "test-machine"
PREFIX = "edge"
REPLAY_SPEED = 20.0  # rows per second of the 1 s-period recording
START_S = 120.0  # a first start may compile the Numba kernels
STEP_S = 60.0
CHANNELS = ["pressure_bar", "motor_current_a", "oil_temp_c", "flow_m3min", "vibration_rms_mms"]


def write_ota_config(
    path: Path, *, keys: Path, port: int, sources: str, bundle: Path | None = None,
    **ota: object,
) -> Path:
    model = f'bundle = "{bundle}"\n' if bundle is not None else ""
    ota_lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in ota.items())
    path.write_text(f"""
machine_id = "{MACHINE}"
state_dir = "{path.parent / 'state'}"

[model]
{model}trust_key = "{keys / 'signing.pub'}"

{sources}

[metrics]
port = 0

[mqtt]
host = "127.0.0.1"
port = {port}
heartbeat_s = 1
backoff_initial_s = 0.2
backoff_max_s = 1

[ota]
enabled = true
{ota_lines}""")
    return path


def publish(port: int, bundle: Path, keys: Path, *extra: str) -> int:
    return export_main([
        "publish", "--bundle", str(bundle), "--key", str(keys / "signing.key"),
        "--broker", f"127.0.0.1:{port}", "--machine", MACHINE, "--timeout", str(STEP_S),
        *extra,
    ])


def states(msgs: list[Received]) -> list[str]:
    return [m.json()["state"] for m in msgs if m.topic.endswith("/model")]


def scoring(version: str, rows: int = 0) -> Callable[[list[Received]], bool]:
    """A heartbeat of ``version`` that has scored more than ``rows`` rows."""
    def ok(msgs: list[Received]) -> bool:
        for m in msgs:
            body = m.json() if m.topic.endswith("/status") else {}
            if body.get("model_version") == version and body.get("counts", {}).get(
                "rows", 0
            ) > rows:
                return True
        return False

    return ok


@pytest.fixture
def watch(mosquitto: Mosquitto) -> Iterator[Subscriber]:
    """Every report and heartbeat the gateway publishes."""
    with Subscriber(mosquitto.port, f"{PREFIX}/{MACHINE}/+") as sub:
        yield sub


def test_export_publish_takes_a_new_bundle_to_active(
    tmp_path: Path, mosquitto: Mosquitto, watch: Subscriber, bundle: Path, keys: Path,
    sim_csv: Path,
) -> None:
    new = variant(bundle, tmp_path / "v2", keys / "signing.key", version="v2")
    cfg = write_ota_config(
        tmp_path / "agent.toml", keys=keys, port=mosquitto.port, bundle=bundle,
        sources=replay_source(sim_csv, speed=REPLAY_SPEED, loop=True), canary_s=60,
        probation_s=2,
    )
    agent = AgentProcess(cfg)
    try:
        agent.read_notify("READY=1", timeout=START_S)
        old = json.loads((bundle / "manifest.json").read_text())["model_version"]
        watch.wait_until(scoring(old, rows=120), STEP_S, "rows for the canary")
        assert publish(mosquitto.port, new, keys) == 0  # it waits for `active`
        msgs = watch.wait_until(lambda m: states(m)[-1:] == ["active"] and len(states(m)) > 2,
                                STEP_S, "active after the update")
        seen = [s for s in states(msgs) if s != "downloading"]
        assert seen == ["active", "verifying", "canary", "probation", "active"]
        probation = [m.json() for m in msgs if m.topic.endswith("/model")][-2]
        assert probation["canary"]["mode"] == "scored", probation["canary"]
        watch.wait_until(scoring("v2"), STEP_S, "v2 scoring")
        port = re.findall(r"metrics on http://[\d.]+:(\d+)/metrics", agent.log())[0]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert 'edge_agent_model_update_state{state="active"} 1.0' in metrics.decode()
        assert "edge_agent_model_updates_activated_total 1.0" in metrics.decode()
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    finally:
        agent.close()
    pointer = read_pointer(OtaPaths.under(tmp_path / "state"))
    assert pointer is not None
    assert (pointer.active, pointer.state, pointer.previous) == ("a", "active", "config")

    again = AgentProcess(cfg)  # a restart starts on the new model
    try:
        again.read_notify("READY=1", timeout=START_S)
        assert "model v2 loaded" in again.log()
    finally:
        again.close()


def test_first_boot_without_a_model_waits_then_activates_the_first_deployment(
    tmp_path: Path, mosquitto: Mosquitto, watch: Subscriber, bundle: Path, keys: Path,
) -> None:
    points = "\n".join(
        f'  {{ channel = "{ch}", address = {2 * i}, type = "float32", order = "CDAB" }},'
        for i, ch in enumerate(CHANNELS)
    )
    plc = (f'[[sources]]\ntype = "modbus_tcp"\nname = "plc"\nhost = "127.0.0.1"\n'
           f'port = {free_port()}\n[[sources.devices]]\nname = "compressor"\n'
           f'poll_period_s = 0.5\npoints = [\n{points}\n]\n')
    sim_cfg = write_ota_config(tmp_path / "sim.toml", keys=keys, port=mosquitto.port,
                               bundle=bundle, sources=plc)
    stop, ready = threading.Event(), threading.Event()
    server = threading.Thread(target=run_simulate, args=(load_config(sim_cfg),),
                              kwargs={"stop": stop, "ready": ready.set}, daemon=True)
    server.start()
    assert ready.wait(30), "simulator did not come up"
    cfg = write_ota_config(tmp_path / "agent.toml", keys=keys, port=mosquitto.port,
                           sources=plc, canary_s=10, probation_s=1)
    agent = AgentProcess(cfg)
    try:
        msgs = agent.read_notify("READY=1", timeout=START_S)
        assert "waiting for model" in msgs[-1]
        first = watch.wait_until(lambda m: "waiting" in states(m), STEP_S, "waiting")
        assert next(m.json() for m in first if m.topic.endswith("/model"))["active"] is None
        assert publish(mosquitto.port, bundle, keys) == 0
        version = json.loads((bundle / "manifest.json").read_text())["model_version"]
        watch.wait_until(scoring(version), STEP_S, "the first model scoring")
        assert agent.proc.poll() is None
    finally:
        agent.close()
        stop.set()
        server.join(10)


def version_of(bundle: Path) -> str:
    return str(json.loads((bundle / "manifest.json").read_text())["model_version"])


def test_sigkill_at_every_step_restarts_on_a_complete_model_and_boot_counting_rolls_back(
    tmp_path: Path, mosquitto: Mosquitto, watch: Subscriber, bundle: Path, keys: Path,
    sim_csv: Path,
) -> None:
    old = version_of(bundle)
    new = variant(bundle, tmp_path / "v2", keys / "signing.key", version="v2")
    cfg = write_ota_config(
        tmp_path / "agent.toml", keys=keys, port=mosquitto.port, bundle=bundle,
        sources=replay_source(sim_csv, speed=REPLAY_SPEED, loop=True), canary_s=0,
        probation_s=600, max_boots=1,
    )
    state = tmp_path / "state"
    desk = Desk(mosquitto.port, keys / "signing.key", prefix=PREFIX)
    dep, chunks = desk.deployment(new, machines=(MACHINE,), chunk_bytes=1024)
    manifest = dep.files["manifest.json"].sha256
    held_back = {t: p for t, p in chunks.items() if f"/{manifest}/" in t and not t.endswith("/0")}

    def run_until_killed(
        cond: Callable[[list[Received]], bool], what: str, then: Callable[[], None] = lambda: None
    ) -> str:
        """Start the agent, see which complete model it scores with, do ``then``, and kill -9
        it once ``cond`` holds; returns the version it started scoring with."""
        mark = len(watch.messages)
        agent = AgentProcess(cfg)
        try:
            agent.read_notify("READY=1", timeout=START_S)
            msgs = watch.wait_until(
                lambda m: scoring(old)(m[mark:]) or scoring("v2")(m[mark:]), STEP_S, "scoring")
            running = next(m.json()["model_version"] for m in msgs[mark:]
                           if m.topic.endswith("/status") and "model_version" in m.json())
            then()
            watch.wait_until(lambda m: cond(m[mark:]), STEP_S, what)
            agent.proc.send_signal(signal.SIGKILL)
            agent.wait(10)
        finally:
            agent.close()
        return str(running)

    try:
        # 1. Mid-download: the deployment and all but the manifest's later chunks are out.
        desk.chunks({t: p for t, p in chunks.items() if t not in held_back})
        desk.order(machine_deployment_topic(PREFIX, MACHINE), dep)
        staging = OtaPaths.under(state).staging / dep.deployment_id
        assert run_until_killed(
            lambda m: staging.is_dir() and any(staging.iterdir()), "a chunk in staging") == old
        assert read_pointer(OtaPaths.under(state)) is None
        # 2. The rest arrives after the restart; killed once the canary is reported.
        assert run_until_killed(lambda m: "canary" in states(m), "canary",
                                then=lambda: desk.chunks(held_back)) == old
        # 3. Killed on probation (right after the switch, then at every start) until one
        #    more start would be one too many.
        paths = OtaPaths.under(state)
        for _ in range(3):
            pointer = read_pointer(paths)
            if pointer is not None and pointer.boots >= 1:  # max_boots
                break
            running = run_until_killed(lambda m: "probation" in states(m), "probation")
            assert running in (old, "v2")
            pointer = read_pointer(paths)
            assert pointer is not None
            assert (pointer.active, pointer.state) == ("a", "probation")
        else:
            raise AssertionError("the boot count did not run out")
        # 4. One start too many on probation: rolled back before the new model is loaded.
        mark = len(watch.messages)
        agent = AgentProcess(cfg)
        try:
            agent.read_notify("READY=1", timeout=START_S)
            msgs = watch.wait_until(lambda m: "rolled_back" in states(m[mark:]), STEP_S,
                                    "rolled_back")
            report = next(m.json() for m in msgs[mark:] if m.topic.endswith("/model"))
            assert report["state"] == "rolled_back"
            assert "started 2 times while the model was on probation" in report["reason"]
            assert report["active"] == old
            watch.wait_until(lambda m: scoring(old)(m[mark:]), STEP_S, "the old model scoring")
        finally:
            agent.close()
    finally:
        desk.close()
    pointer = read_pointer(OtaPaths.under(state))
    assert pointer is not None
    assert (pointer.active, pointer.previous, pointer.state) == ("config", "a", "active")
    assert pointer.floor_version == "v2"  # the rolled-back release stays refused


def test_a_model_alerting_on_everything_is_rolled_back_in_probation(
    tmp_path: Path, mosquitto: Mosquitto, watch: Subscriber, bundle: Path, keys: Path,
    sim_csv: Path,
) -> None:
    old = version_of(bundle)
    alerting = variant(bundle, tmp_path / "alerting", keys / "signing.key",
                       edit=alert_everything, version="v-alerting")
    cfg = write_ota_config(
        tmp_path / "agent.toml", keys=keys, port=mosquitto.port, bundle=bundle,
        sources=replay_source(sim_csv, speed=REPLAY_SPEED, loop=True), canary_s=0,
        probation_s=600,
    )
    agent = AgentProcess(cfg)
    try:
        agent.read_notify("READY=1", timeout=START_S)
        watch.wait_until(scoring(old), STEP_S, "the old model scoring")
        assert publish(mosquitto.port, alerting, keys, "--no-wait") == 0
        msgs = watch.wait_until(lambda m: "rolled_back" in states(m), STEP_S, "rolled_back")
        report = [m.json() for m in msgs if m.topic.endswith("/model")][-1]
        assert report["active"] == old
        assert "over [ota] probation_max_alert_share" in report["reason"]
        assert states(msgs)[-2:] == ["probation", "rolled_back"]
        mark = len(watch.messages)
        watch.wait_until(lambda m: scoring(old)(m[mark:]), STEP_S, "the old model scoring")
        assert agent.proc.poll() is None
    finally:
        agent.close()
