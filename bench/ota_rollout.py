"""Over-the-air rollout: ``export publish`` to ``active`` on a fleet of real agent processes.

The agents run as systemd runs them (``python -m edge_agent run``, a notify socket, one state
directory each), every one fed by a looping replay source of simulator history, all against one
local Mosquitto. Each agent reaches the broker through its own counting TCP relay, so the bytes
the broker sends to *that* gateway are measured exactly (client side of the wire, MQTT framing
included). For each fleet size (default 1 and 20 gateways) the bench:

1. starts the agents on an old release (another trained model, so that no data file is shared)
   and waits until every one has scored the rows its canary needs;
2. runs ``python -m export publish --group bench`` in a subprocess, as a user would, with a new
   release: publish → ``active`` per gateway (and the time each step was first reported), bytes
   on the wire per gateway against the bundle's size;
3. publishes again a release sharing every data file with the running one (only the manifest
   differs): content addressing means the gateway downloads only what it lacks.

For both publishes it also records the rows left unscored by the swap (from each agent's own
heartbeat counts: with a window hop of 1 every row after the first full window completes one
window, so ``rows - windows`` must not move across the swap) and the agents' RSS
(``/proc/<pid>/status`` VmRSS sampled every 0.1 s) while they download, canary and swap,
against each one's steady state just before the publish.

    python bench/ota_rollout.py          # 1 and 20 gateways -> bench/results/ota_rollout.json
    python bench/ota_rollout.py --gateways 1 --speed 20 --canary-s 40 --out X   # CI smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import ROOT, machine, make_bundle

sys.path.insert(0, str(ROOT / "tests"))  # the tests' real-broker and desk helpers
sys.path.insert(0, str(ROOT / "tests" / "edge_agent" / "agent"))
from agent_support import AgentProcess, replay_source
from broker import Mosquitto
from ota_desk import variant
from ota_fleet import ByteRelay, FleetWatch, RssSampler, agent_config

GROUP = "bench"
PREFIX = "edge"
READY_TIMEOUT_S = 180.0
ROWS_TIMEOUT_S = 240.0
HEARTBEATS_AFTER = 3  # heartbeats (1 s apart) after `active` the unscored-row count is read on
OLD_MODEL_SEEDS = (23, 24, 25, 26)  # history seeds tried for the release the agents start on
STEADY_S = 5.0  # RSS and relay traffic sampled this long before each publish


@dataclass
class Fleet:
    """N agents, their relays, and what watches them."""

    work: Path
    broker: Mosquitto
    agents: list[AgentProcess] = field(default_factory=list)
    relays: list[ByteRelay] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def close(self) -> None:
        for a in self.agents:
            a.close()
        for r in self.relays:
            r.close()


def start_fleet(
    work: Path, broker: Mosquitto, n: int, old: Path, pub: Path, csv: Path, a: argparse.Namespace
) -> Fleet:
    fleet = Fleet(work, broker)
    for i in range(n):
        name = f"gw{i:02d}"
        relay = ByteRelay(broker.port)
        cfg = agent_config(
            work / name / "agent.toml",
            machine_id=name,
            trust=pub,
            port=relay.port,
            bundle=old,
            sources=replay_source(csv, speed=a.speed, loop=True),
            groups=[GROUP],
            canary_s=a.canary_s,
            probation_s=a.probation_s,
        )
        fleet.names.append(name)
        fleet.relays.append(relay)
        fleet.agents.append(AgentProcess(cfg))
    for agent in fleet.agents:
        agent.read_notify("READY=1", timeout=READY_TIMEOUT_S)
    return fleet


def publish(bundle: Path, key: Path, port: int, timeout_s: float) -> tuple[int, float, str]:
    """``python -m export publish --group bench`` as a user runs it; (rc, seconds, output)."""
    t0 = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            "publish",
            "--bundle",
            str(bundle),
            "--key",
            str(key),
            "--broker",
            f"127.0.0.1:{port}",
            "--group",
            GROUP,
            "--timeout",
            str(timeout_s),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return out.returncode, time.monotonic() - t0, out.stdout + out.stderr


def bundle_bytes(bundle: Path) -> int:
    return sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())


def one_publish(
    fleet: Fleet,
    watch: FleetWatch,
    rss: RssSampler,
    bundle: Path,
    key: Path,
    held: Path,
    a: argparse.Namespace,
) -> dict[str, Any]:
    """Publish ``bundle`` to the fleet (whose agents hold ``held``) and measure it."""
    version = json.loads((bundle / "manifest.json").read_text())["model_version"]
    time.sleep(STEADY_S)
    t_steady = time.monotonic() - STEADY_S
    down0 = [r.down for r in fleet.relays]
    t0 = time.monotonic()
    rate = [(r.down - r.down_at(t_steady)) / (t0 - t_steady) for r in fleet.relays]
    gap0 = {n: watch.unscored_gap(n, since=t_steady) for n in fleet.names}
    rc, wall, out = publish(bundle, key, fleet.broker.port, a.timeout)
    done = {n: watch.first_state(n, "active", version, since=t0, wait_s=10.0) for n in fleet.names}
    ends = [t for t in done.values() if t is not None]
    t_end = max(ends) if ends else time.monotonic()
    for n in fleet.names:
        watch.wait_heartbeats(n, HEARTBEATS_AFTER, since=t_end, timeout=30.0)
    per: list[dict[str, Any]] = []
    for i, n in enumerate(fleet.names):
        t_active = done[n]
        span = (t_active or t_end) - t0
        down = fleet.relays[i].down_at(t_active or t_end) - down0[i]
        steps = {
            s: watch.first_state(n, s, None, since=t0)
            for s in ("downloading", "verifying", "canary", "probation")
        }
        gap1 = watch.unscored_gap(n, since=(t_active or t_end))
        steady, peak = rss.steady_and_peak(i, t_steady, t0, t_active or t_end)
        per.append(
            {
                "machine": n,
                "to_active_s": None if t_active is None else round(t_active - t0, 2),
                "steps_s": {s: None if t is None else round(t - t0, 2) for s, t in steps.items()},
                "bytes_received": down,
                "bytes_received_less_idle": round(down - rate[i] * span),
                "rows_unscored_by_swap": None
                if gap0[n] is None or gap1 is None
                else gap1 - gap0[n],
                "rss_steady_mb": round(steady, 1),
                "rss_peak_mb": round(peak, 1),
                "rss_over_steady_mb": round(peak - steady, 1),
            }
        )
    fleet_to_active = [p["to_active_s"] for p in per if p["to_active_s"] is not None]
    new_files = {
        name: (bundle / name).stat().st_size
        for name in sorted(p.name for p in bundle.iterdir())
        if not (held / name).exists() or (held / name).read_bytes() != (bundle / name).read_bytes()
    }
    return {
        "model_version": version,
        "publish_rc": rc,
        "publish_wall_s": round(wall, 2),
        "publish_output_tail": out.strip().splitlines()[-3:],
        "bundle_bytes": bundle_bytes(bundle),
        "bytes_of_files_not_held": sum(new_files.values()),
        "files_not_held": sorted(new_files),
        "active": f"{len(fleet_to_active)}/{len(per)}",
        "to_active_s": summary(fleet_to_active),
        "bytes_received_per_gateway": summary([p["bytes_received"] for p in per]),
        "rows_unscored_by_swap_total": sum(p["rows_unscored_by_swap"] or 0 for p in per),
        "rows_unscored_unknown": sum(p["rows_unscored_by_swap"] is None for p in per),
        "rss_over_steady_mb": summary([p["rss_over_steady_mb"] for p in per]),
        "per_gateway": per,
    }


def summary(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    return {"min": min(xs), "median": round(statistics.median(xs), 2), "max": max(xs)}


def run_size(
    work: Path,
    n: int,
    releases: dict[str, Path],
    key: Path,
    pub: Path,
    csv: Path,
    a: argparse.Namespace,
) -> dict[str, Any]:
    broker = Mosquitto(work / "broker")
    broker.start()
    fleet: Fleet | None = None
    watch = FleetWatch(broker.port, PREFIX)
    rss: RssSampler | None = None
    try:
        fleet = start_fleet(work, broker, n, releases["old"], pub, csv, a)
        rss = RssSampler([ag.proc.pid for ag in fleet.agents])
        watch.wait_rows(fleet.names, int(a.canary_s) + 64, ROWS_TIMEOUT_S)
        full = one_publish(fleet, watch, rss, releases["new"], key, releases["old"], a)
        shared = one_publish(fleet, watch, rss, releases["shared"], key, releases["new"], a)
        exits = []
        for ag in fleet.agents:
            ag.proc.terminate()
        for ag in fleet.agents:
            exits.append(ag.wait(30))
        kernels = sorted(
            {
                line.split("] ", 1)[-1]
                for ag in fleet.agents
                for line in ag.log().splitlines()
                if "kernels" in line
            }
        )[:3]
        return {
            "gateways": n,
            "full_release": full,
            "shared_files_release": shared,
            "agent_exit_codes": sorted(set(exits)),
            "agent_kernels_log": kernels,
        }
    finally:
        if rss is not None:
            rss.close()
        watch.close()
        if fleet is not None:
            fleet.close()
        broker.stop()


def other_model(work: Path) -> Path:
    """A second model, trained on other history (the first seed whose int8 bundle passes the
    export's parity gate)."""
    from export.errors import ExportError

    for seed in OLD_MODEL_SEEDS:
        try:
            return make_bundle(
                work / f"model-old-{seed}", history_rows=20_000, epochs=5, seed=seed
            )[0]
        except ExportError as err:
            print(f"seed {seed}: {err}", file=sys.stderr)
    raise SystemExit("no second model passed the parity gate")


def releases(work: Path, a: argparse.Namespace) -> tuple[dict[str, Path], Path, Path]:
    """The old release the agents start on, the new one, and one sharing the new one's files;
    all signed with one key, each strictly newer than the one before."""
    if a.bundle:
        if a.key is None:
            raise SystemExit("--bundle needs --key (the private signing key)")
        new_src, key = Path(a.bundle), Path(a.key)
        old_src = Path(a.old_bundle) if a.old_bundle else new_src
    else:
        new_src, _ = make_bundle(work / "model-new", history_rows=20_000, epochs=5, seed=21)
        old_src = other_model(work)
        key = work / "model-new" / "keys" / "signing.key"
    pub = key.with_suffix(".pub")
    old = variant(old_src, work / "rel-old", key, version="bench-v1")

    def after(prev: Path) -> Callable[[dict[str, Any]], None]:
        """Take ``prev``'s created_at: signing a new release then moves it strictly later."""
        stamp = json.loads((prev / "manifest.json").read_text())["created_at"]
        return lambda doc: doc.__setitem__("created_at", stamp)

    new = variant(new_src, work / "rel-new", key, edit=after(old), version="bench-v2")
    shared = variant(new, work / "rel-shared", key, edit=after(new), version="bench-v3")
    return {"old": old, "new": new, "shared": shared}, key, pub


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gateways", type=int, nargs="+", default=[1, 20], help="fleet sizes")
    ap.add_argument("--bundle", type=Path, help="the new release (default: train one)")
    ap.add_argument("--key", type=Path, help="private key for --bundle (signing.key)")
    ap.add_argument(
        "--old-bundle",
        type=Path,
        help="release the agents start on "
        "(default with --bundle: a re-signed copy of it, sharing its files)",
    )
    ap.add_argument("--speed", type=float, default=10.0, help="replay rows per second per agent")
    ap.add_argument("--canary-s", type=float, default=120.0, help="[ota] canary_s")
    ap.add_argument("--probation-s", type=float, default=5.0, help="[ota] probation_s")
    ap.add_argument("--timeout", type=float, default=300.0, help="export publish --timeout")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ota_rollout.json")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ota-bench-") as tmp:
        work = Path(tmp)
        rel, key, pub = releases(work, a)
        csv = work / "plant.csv"
        from edge_agent.simulator import simulate_plant

        simulate_plant(rows=4_000, seed=5).write_csv(csv)
        sizes = [run_size(work / f"fleet-{n}", n, rel, key, pub, csv, a) for n in a.gateways]
    result = {
        "benchmark": "OTA rollout: python -m export publish --group to `active` on N real agent "
        "processes (looping replay source) against one local Mosquitto",
        "machine": machine(),
        "settings": {
            "replay_rows_per_s": a.speed,
            "canary_s": a.canary_s,
            "probation_s": a.probation_s,
            "chunk_bytes": 65536,
            "bytes": "broker -> gateway, counted by a TCP relay per agent (MQTT "
            "framing included); less_idle subtracts each agent's rate in "
            f"the {STEADY_S:.0f} s before the publish",
            "rows_unscored": "change of (rows - windows) in the agent's heartbeat "
            "counts across the update (window hop 1)",
            "rss": "VmRSS of each agent every 0.1 s; steady = median of the "
            f"{STEADY_S:.0f} s before the publish, peak = max until active",
        },
        "runs": sizes,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                r["gateways"]: {
                    k: r[k]["to_active_s"] for k in ("full_release", "shared_files_release")
                }
                for r in sizes
            }
        )
    )


if __name__ == "__main__":
    main()
