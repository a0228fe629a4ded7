"""Fleet learning end to end on this machine: simulated compressors, real agents, one broker.

What ``scripts/fleet-demo`` runs (``--help`` for the sizes):

1. The desk trains the first global model on the reference compressor's history
   (``trainer fit``), makes the fleet signing key (``export keygen``) and exports the signed int8
   bundle (``export bundle``).
2. A local Mosquitto on a free loopback port.
3. ``--gateways`` agents (``python -m edge_agent run``), each its own compressor (a
   :class:`~edge_agent.simulator.MachineProfile`: pressure setpoint, ambient, demand, sensor
   noise, wear) replayed at speed, with its own device key (``python -m
   edge_agent.learn.device_key``, registered in the desk's key directory as ``<machine>.pub``),
   ``[ota]`` and ``[learn]`` on. Each fills its buffer with the windows it judged normal.
4. One round: ``trainer federate --broker ... --publish`` announces it (signed), the agents
   train locally at low priority and send signed top-k deltas through their outboxes, the
   aggregator verifies and averages them into a new run, exports it and publishes it over the
   air; each agent downloads, verifies, calibrates its own threshold on its buffered normal
   windows at canary, and activates it.
5. The fleet as the broker shows it (``export fleet``) and each gateway's local threshold.

Everything lands in ``--out`` (default ``fleet_out/``): the desk's run, keys and bundles, the
round's spool of deltas and ``federate.json``, each gateway's config, state and log. Exit code 0
when every gateway runs the new model, 1 otherwise (the logs say why).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.simulator import MachineProfile, simulate_plant  # noqa: E402

PY = sys.executable
PREFIX = "edge"
ROUND_ID = "round-1"
BROKER_READY_S = 10.0
AGENT_READY_S = 120.0
STOP_S = 40.0
POLL_S = 0.5
# The fleet: one model of compressor in different plants (the first is the reference machine).
PROFILES = (
    MachineProfile(),
    MachineProfile(ambient_offset_c=-6.0, demand_scale=1.2, current_offset_a=4.0),
    MachineProfile(pressure_offset_bar=-0.4, demand_scale=0.7, vibration_offset_mms=0.6),
    # The furthest from the reference: the first global model alerts on much of its day.
    MachineProfile(pressure_offset_bar=0.6, ambient_offset_c=8.0, noise_scale=1.4),
    MachineProfile(pressure_offset_bar=0.3, noise_scale=1.8, vibration_offset_mms=0.3),
    MachineProfile(ambient_offset_c=4.0, demand_scale=0.85, current_offset_a=2.0),
)
FIT_TOML = "[window]\nlength = 32\n[autoencoder]\nkind = \"dense\"\nepochs = {epochs}\n"


def say(text: str) -> None:
    print(f"== {text}", flush=True)


def run(*args: str) -> None:
    """A CLI step of the desk, its output shown; a failure ends the demo with its exit code."""
    proc = subprocess.run([PY, *args], cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"step failed ({proc.returncode}): {' '.join(args)}")


@dataclass
class Gateway:
    machine: str
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def metrics(self) -> dict[str, float]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        ports = re.findall(r"metrics on http://[\d.]+:(\d+)/metrics", text)
        if not ports:
            return {}
        url = f"http://127.0.0.1:{ports[-1]}/metrics"
        try:
            body = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            return {}
        found = re.findall(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", body, re.MULTILINE)
        return {name: float(value) for name, value in found}


def start_broker(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise SystemExit("mosquitto is not installed (Debian: apt-get install mosquitto)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + BROKER_READY_S
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"mosquitto did not listen on 127.0.0.1:{port}")


def desk_model(out: Path, a: argparse.Namespace) -> tuple[Path, Path, Path]:
    """The first global model: run, fleet key, bundle (kept across runs of the demo)."""
    run_dir, keys, bundle = out / "desk" / "run-0", out / "desk" / "keys", out / "desk" / "bundle-0"
    if (bundle / "manifest.json").exists():
        say(f"the desk's first model is already there: {bundle}")
        return run_dir, keys, bundle
    shutil.rmtree(out / "desk", ignore_errors=True)
    (out / "desk").mkdir(parents=True)
    history = out / "desk" / "history.csv"
    say(f"desk: {a.history_hours:g} h of the reference compressor's normal history")
    rows = int(a.history_hours * 3600)
    simulate_plant(rows=rows, seed=1, anomaly_fraction=0.0).write_csv(history)
    cfg = out / "desk" / "fit.toml"
    cfg.write_text(FIT_TOML.format(epochs=a.epochs))
    say("desk: trainer fit, export keygen, export bundle")
    run("-m", "trainer", "fit", "--data", str(history), "--out", str(run_dir),
        "--config", str(cfg), "--seed", "1")  # fmt: skip
    run("-m", "export", "keygen", "--out", str(keys))
    run("-m", "export", "bundle", "--run", str(run_dir), "--out", str(bundle),
        "--key", str(keys / "signing.key"), "--variants", "none", "--force")  # fmt: skip
    return run_dir, keys, bundle


def gateway(out: Path, index: int, port: int, keys: Path, bundle: Path, a: argparse.Namespace,
            registry: Path) -> Gateway:  # fmt: skip
    machine = f"compressor-{index + 1:02d}"
    home = out / "gateways" / machine
    shutil.rmtree(home, ignore_errors=True)
    (home / "keys").mkdir(parents=True)
    data = home / "plant.csv"
    # Fault-free: a fault during the short probation would (rightly) roll the model back, and
    # this demo is about learning; scripts/demo shows detection.
    simulate_plant(rows=a.rows, seed=100 + index, profile=PROFILES[index % len(PROFILES)],
                   anomaly_fraction=0.0,
                   start_time=1_767_225_600.0 + 3600.0 * index).write_csv(data)  # fmt: skip
    run("-m", "edge_agent.learn.device_key", "--out", str(home / "keys"))
    shutil.copy(home / "keys" / "device.pub", registry / f"{machine}.pub")
    config = home / "agent.toml"
    config.write_text(f"""machine_id = "{machine}"
state_dir = "{home / 'state'}"

[model]
bundle = "{bundle}"
trust_key = "{keys / 'signing.pub'}"

[[sources]]
type = "replay"
path = "{data}"
speed = {a.speed}
loop = true

[metrics]
port = 0

[mqtt]
host = "127.0.0.1"
port = {port}
topic_prefix = "{PREFIX}"

[ota]
enabled = true
canary_s = {a.canary_s}
probation_s = {a.probation_s}

[learn]
enabled = true
device_key = "{home / 'keys' / 'device.key'}"
chunk_rows = 200
sample_every_s = 0
""")
    return Gateway(machine, config, home / "agent.log")


def wait_for(
    gateways: list[Gateway], name: str, at_least: float, what: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        values = [g.metrics().get(name, 0.0) for g in gateways]
        if all(v >= at_least for v in values):
            return
        for g in gateways:
            if g.proc is not None and g.proc.poll() is not None:
                raise SystemExit(f"{g.machine} exited ({g.proc.returncode}); see {g.log}")
        time.sleep(POLL_S)
    raise SystemExit(f"timed out waiting for {what}; see the agents' logs")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_S
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "fleet_out")
    ap.add_argument("--gateways", type=int, default=4, help="agents, each its own compressor")
    ap.add_argument("--history-hours", type=float, default=6.0, help="the desk's history")
    ap.add_argument("--epochs", type=int, default=20, help="the desk model's training epochs")
    ap.add_argument("--rows", type=int, default=20_000, help="rows each gateway replays (loop)")
    ap.add_argument("--speed", type=float, default=100.0, help="replay pace, times real time")
    ap.add_argument("--buffer-rows", type=int, default=600,
                    help="normal rows each gateway buffers before the round")
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--canary-s", type=float, default=60.0)
    ap.add_argument("--probation-s", type=float, default=10.0)
    ap.add_argument("--round-timeout", type=float, default=300.0)
    a = ap.parse_args(argv)
    if a.gateways < 1:
        ap.error("--gateways must be at least 1")
    t0 = time.monotonic()
    a.out.mkdir(parents=True, exist_ok=True)
    run_dir, keys, bundle = desk_model(a.out, a)
    registry = a.out / "desk" / "device-keys"
    shutil.rmtree(registry, ignore_errors=True)
    registry.mkdir()
    broker, port = start_broker(a.out)
    gateways: list[Gateway] = []
    say(f"broker on 127.0.0.1:{port}; starting {a.gateways} gateways")
    try:
        for i in range(a.gateways):
            g = gateway(a.out, i, port, keys, bundle, a, registry)
            g.proc = subprocess.Popen([PY, "-m", "edge_agent", "run", "--config", str(g.config)],
                                      cwd=ROOT, stdout=g.log.open("wb"),
                                      stderr=subprocess.STDOUT)  # fmt: skip
            gateways.append(g)
        wanted = f"{a.buffer_rows} buffered normal rows on every gateway"
        wait_for(gateways, "edge_agent_learn_buffer_rows", a.buffer_rows, wanted, AGENT_READY_S)
        say(f"every gateway buffered {a.buffer_rows}+ normal rows "
            f"({time.monotonic() - t0:.0f} s in); the round starts")
        new_run = a.out / "desk" / "run-1"
        for old in (new_run, new_run.with_name("run-1.bundle"), new_run.with_name("run-1.deltas")):
            shutil.rmtree(old, ignore_errors=True)
        code = subprocess.run([
            PY, "-m", "trainer", "federate", "--run", str(run_dir), "--round", ROUND_ID,
            "--broker", f"127.0.0.1:{port}", "--topic-prefix", PREFIX, "--bundle", str(bundle),
            "--key", str(keys / "signing.key"), "--trust-devices", str(registry),
            "--out", str(new_run), "--min-clients", str(a.gateways),
            "--round-timeout", str(a.round_timeout), "--epochs", str(a.local_epochs),
            "--publish", "--publish-timeout", str(a.canary_s * 2 + a.probation_s + 120),
        ], cwd=ROOT, check=False).returncode  # fmt: skip
        say("the fleet as the broker shows it (export fleet)")
        subprocess.run([PY, "-m", "export", "fleet", "--broker", f"127.0.0.1:{port}",
                        "--topic-prefix", PREFIX], cwd=ROOT, check=False)  # fmt: skip
        say("each gateway's own threshold for the new model (scale of the desk's)")
        for g in gateways:
            scale = g.metrics().get("edge_agent_alert_threshold_scale")
            print(f"   {g.machine}: {'-' if scale is None else f'{scale:.3f}'}")
        report = json.loads((new_run / "federate.json").read_text()) if new_run.exists() else {}
        if report:
            print(f"   federate.json: {len(report.get('clients', []))} deltas received")
    finally:
        stop([g.proc for g in gateways if g.proc is not None])
        stop([broker])
    say(f"done in {time.monotonic() - t0:.0f} s; everything is in {a.out}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
