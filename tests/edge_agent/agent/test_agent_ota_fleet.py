"""Over-the-air updates to a fleet of two: two real agent processes as systemd runs them, one
real Mosquitto, releases published with the desk's own ``export publish``.

- Two gateways in different groups: a group deployment reaches only its members, the other
  gateway never sees it; the other group's deployment then takes the second one to ``active``,
  and ``export fleet`` shows both on the new model.
- A gateway stopped during the push finds the retained deployment and chunks when it starts
  again and updates.
- A staged rollout (``--wave 1 --halt-on-rollback``) whose first gateway rolls the new model
  back in probation stops there: the second gateway gets nothing and keeps its model.

Single gateways, and every fault of one gateway, are in ``test_agent_ota.py``.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_support import AgentProcess, replay_source
from broker import Mosquitto, Received, Subscriber
from ota_desk import alert_everything, variant

from edge_agent.ota.protocol import machine_deployment_topic
from export.cli import main as export_main

PREFIX = "edge"
REPLAY_SPEED = 20.0  # rows per second of the 1 s-period recording
START_S = 120.0  # a first start may compile the Numba kernels
STEP_S = 60.0
STOP_S = 30.0


def fleet_config(
    path: Path, *, machine: str, groups: list[str], keys: Path, port: int, bundle: Path,
    csv: Path, **ota: object,
) -> Path:
    """One gateway's config at ``path``, its state directory beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ota_lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in ota.items())
    path.write_text(f"""
machine_id = "{machine}"
state_dir = "{path.parent / 'state'}"

[model]
bundle = "{bundle}"
trust_key = "{keys / 'signing.pub'}"

{replay_source(csv, speed=REPLAY_SPEED, loop=True)}

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
groups = {json.dumps(groups)}
{ota_lines}""")
    return path


def publish(port: int, bundle: Path, keys: Path, *targets: str) -> int:
    return export_main([
        "publish", "--bundle", str(bundle), "--key", str(keys / "signing.key"),
        "--broker", f"127.0.0.1:{port}", "--timeout", str(STEP_S), *targets,
    ])


def reports(msgs: list[Received], machine: str) -> list[dict[str, Any]]:
    return [m.json() for m in msgs if m.topic == f"{PREFIX}/{machine}/model"]


def scoring(msgs: list[Received], machine: str, version: str) -> bool:
    """A heartbeat of ``machine`` scoring rows with ``version``."""
    for m in msgs:
        if m.topic == f"{PREFIX}/{machine}/status":
            body = m.json()
            if body.get("model_version") == version and body.get("counts", {}).get("rows", 0):
                return True
    return False


def fleet_view(port: int, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    """``export fleet --json``, by machine."""
    capsys.readouterr()
    assert export_main(["fleet", "--broker", f"127.0.0.1:{port}", "--json"]) == 0
    return {m["machine_id"]: m for m in json.loads(capsys.readouterr().out)["machines"]}


def active_on(msgs: list[Received], machine: str, version: str) -> bool:
    """``machine``'s latest report says ``version`` is active (probation over)."""
    last = reports(msgs, machine)[-1:]
    return bool(last) and (last[0]["state"], last[0]["active"]) == ("active", version)


def version_of(bundle: Path) -> str:
    return str(json.loads((bundle / "manifest.json").read_text())["model_version"])


@pytest.fixture
def watch(mosquitto: Mosquitto) -> Iterator[Subscriber]:
    """Every gateway's update reports and heartbeats."""
    with Subscriber(mosquitto.port, f"{PREFIX}/+/+") as sub:
        yield sub


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for a in started:
        a.close()


def start(agents: list[AgentProcess], cfg: Path) -> AgentProcess:
    agent = AgentProcess(cfg)
    agents.append(agent)
    agent.read_notify("READY=1", timeout=START_S)
    return agent


def test_each_group_deployment_reaches_only_its_members(
    tmp_path: Path, mosquitto: Mosquitto, watch: Subscriber, agents: list[AgentProcess],
    bundle: Path, keys: Path, sim_csv: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    old = version_of(bundle)
    v2 = variant(bundle, tmp_path / "v2", keys / "signing.key", version="v2")
    for machine, group in (("press-a", "line-a"), ("press-b", "line-b")):
        start(agents, fleet_config(
            tmp_path / machine / "agent.toml", machine=machine, groups=[group], keys=keys,
            port=mosquitto.port, bundle=bundle, csv=sim_csv, canary_s=0, probation_s=1,
        ))
    for machine in ("press-a", "press-b"):
        watch.wait_until(lambda m, who=machine: scoring(m, who, old), STEP_S, f"{machine} up")

    assert publish(mosquitto.port, v2, keys, "--group", "line-a") == 0  # waits for press-a
    # ``publish`` saw press-a's "active" on its own subscription; this one may get it a moment
    # later than the first v2 heartbeat (sent in probation), so wait for both.
    msgs = watch.wait_until(
        lambda m: scoring(m, "press-a", "v2") and active_on(m, "press-a", "v2"), STEP_S,
        "press-a active on v2")
    # press-b never took line-a's deployment: no step of it, still its old model.
    assert {r["state"] for r in reports(msgs, "press-b")} == {"active"}
    assert all(r.get("deployment_id") is None for r in reports(msgs, "press-b"))
    mark = len(watch.messages)
    watch.wait_until(lambda m: scoring(m[mark:], "press-b", old), STEP_S, "press-b on v1")

    assert publish(mosquitto.port, v2, keys, "--group", "line-b") == 0
    watch.wait_until(lambda m: active_on(m, "press-b", "v2"), STEP_S, "press-b on v2")
    fleet = fleet_view(mosquitto.port, capsys)
    assert [(fleet[m]["active"], fleet[m]["state"], fleet[m]["groups"]) for m in
            ("press-a", "press-b")] == [("v2", "active", ["line-a"]), ("v2", "active", ["line-b"])]


def test_a_gateway_stopped_during_the_push_updates_when_it_returns(
    tmp_path: Path, mosquitto: Mosquitto, watch: Subscriber, agents: list[AgentProcess],
    bundle: Path, keys: Path, sim_csv: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    old = version_of(bundle)
    v2 = variant(bundle, tmp_path / "v2", keys / "signing.key", version="v2")
    cfgs = {m: fleet_config(tmp_path / m / "agent.toml", machine=m, groups=[], keys=keys,
                            port=mosquitto.port, bundle=bundle, csv=sim_csv, canary_s=0,
                            probation_s=1) for m in ("m1", "m2")}
    start(agents, cfgs["m1"])
    m2 = start(agents, cfgs["m2"])
    watch.wait_until(lambda m: scoring(m, "m2", old), STEP_S, "m2 scoring")
    m2.proc.send_signal(signal.SIGTERM)
    assert m2.wait(STOP_S) == 0

    assert publish(mosquitto.port, v2, keys, "--machine", "m1", "--machine", "m2",
                   "--no-wait") == 0
    watch.wait_until(lambda m: scoring(m, "m1", "v2"), STEP_S, "m1 on v2")
    mark = len(watch.messages)
    start(agents, cfgs["m2"])  # back: it finds the retained deployment and chunks
    msgs = watch.wait_until(lambda m: active_on(m[mark:], "m2", "v2"), STEP_S, "m2 on v2")
    assert "downloading" in [r["state"] for r in reports(msgs[mark:], "m2")]
    watch.wait_until(lambda m: active_on(m, "m1", "v2"), STEP_S, "m1 on v2")
    fleet = fleet_view(mosquitto.port, capsys)
    assert [(fleet[m]["active"], fleet[m]["state"]) for m in ("m1", "m2")] == [
        ("v2", "active"), ("v2", "active")]


def test_a_rollback_in_the_first_wave_halts_the_rollout(
    tmp_path: Path, mosquitto: Mosquitto, watch: Subscriber, agents: list[AgentProcess],
    bundle: Path, keys: Path, sim_csv: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    old = version_of(bundle)
    alerting = variant(bundle, tmp_path / "alerting", keys / "signing.key",
                       edit=alert_everything, version="v-alerting")
    for m in ("m1", "m2"):
        start(agents, fleet_config(tmp_path / m / "agent.toml", machine=m, groups=[], keys=keys,
                                   port=mosquitto.port, bundle=bundle, csv=sim_csv, canary_s=0,
                                   probation_s=600))
    for m in ("m1", "m2"):
        watch.wait_until(lambda msgs, who=m: scoring(msgs, who, old), STEP_S, f"{m} scoring")

    capsys.readouterr()
    rc = publish(mosquitto.port, alerting, keys, "--machine", "m1", "--machine", "m2",
                 "--wave", "1", "--halt-on-rollback")
    out = capsys.readouterr().out
    assert rc == 1
    assert "halted: m1 rolled back" in out
    msgs = watch.wait_until(lambda m: bool(reports(m, "m1"))
                            and reports(m, "m1")[-1]["state"] == "rolled_back", STEP_S,
                            "m1 rolled back")
    assert reports(msgs, "m1")[-1]["active"] == old
    # m2 was never sent anything: no deployment retained for it, no step reported.
    with Subscriber(mosquitto.port, f"{PREFIX}/ota/machine/+/deployment") as deps:
        held = deps.wait_for(1, STEP_S)
    assert [m.topic for m in held] == [machine_deployment_topic(PREFIX, "m1")]
    assert {r["state"] for r in reports(msgs, "m2")} == {"active"}
    mark = len(watch.messages)
    watch.wait_until(lambda m: scoring(m[mark:], "m2", old), STEP_S, "m2 still on its model")
    watch.wait_until(lambda m: scoring(m[mark:], "m1", old), STEP_S, "m1 back on its model")
