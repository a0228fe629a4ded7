"""Soak with faults: the daemon keeps scoring and loses no event while its world breaks.

The real agent (``edge_agent.agent.Agent``, in this process so the bench can step its wall
clock and inject a crash into a source thread) watches the plant simulator over real Modbus TCP
(``python -m edge_agent simulate`` in a subprocess, one sample per second) and delivers to a
real Mosquitto, with its state directory on a small tmpfs. On a schedule it meets:

* ``disk_full``: the tmpfs is filled to the last byte, then freed (``--fault-s`` later);
* ``broker_down``: Mosquitto stopped, then started again on the same port;
* ``clock_back`` / ``clock_forward``: the wall clock stepped back by an hour, later forward
  again (NTP on a Pi without a real-time clock);
* ``source_crash``: every poll of the Modbus source raises an unexpected exception, so its
  thread crash-loops under the supervisor until the fault ends;
* ``device_gone``: the Modbus simulator killed, then started again;
* ``disk_full+device_gone``: both at once, so the device's sensor-fault events arrive while
  the disk refuses them.

Recorded: rows and scored windows per 10 s through the run, the longest stretch without a
scored row overall and inside each fault, events emitted against events a persistent
subscriber received plus events the agent counted as dropped (lost must be 0), RSS growth
(last tenth against the tenth after warm-up) and open file descriptors.

    python bench/fault_soak.py            # 30 min -> bench/results/fault_soak.json
    python bench/fault_soak.py --minutes 1.5 --fault-s 6 --out X   # CI smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import ROOT, add_bundle_args, bundle_from_args, machine

sys.path.insert(0, str(ROOT / "tests"))  # the tests' real-broker helpers
from broker import Mosquitto, Subscriber, free_port
from disk import fill, mount_tmpfs, unmount

SAMPLE_EVERY_S = 1.0
BUCKET_S = 10.0
TMPFS_MB = 16
HOUR_S = 3600.0
DRAIN_WAIT_S = 60.0
# One after the other; the last pair together, so that events (the device's sensor faults)
# arrive while the disk refuses them.
FAULTS = ("disk_full", "broker_down", "clock_back", "clock_forward", "source_crash",
          "device_gone", "disk_full+device_gone")  # fmt: skip


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class FaultRecord:
    name: str
    start_s: float
    end_s: float = 0.0
    note: str = ""
    rows_during: int = 0
    longest_no_row_s: float = 0.0


@dataclass
class World:
    """What the faults act on."""

    work: Path
    state: Path
    broker: Mosquitto
    sim_cmd: list[str]
    sim: subprocess.Popen[bytes] | None = None
    tmpfs: bool = False
    wall_offset: float = 0.0
    crash: threading.Event = field(default_factory=threading.Event)
    gone: int = 0  # device_gone faults now on

    def start_sim(self) -> None:
        if self.sim is not None and self.sim.poll() is None:
            return  # one simulator at a time: a second could not bind the port, and leaks
        log = (self.work / "simulate.log").open("ab")
        self.sim = subprocess.Popen(self.sim_cmd, cwd=ROOT, stdout=log, stderr=log)
        log.close()

    def device_gone(self, begin: bool) -> str:
        """The device is gone while any ``device_gone`` fault is on: faults can overlap (the
        combined one may start before the single one ends)."""
        self.gone += 1 if begin else -1
        if begin and self.gone == 1:
            self.stop_sim()
        elif not begin and self.gone == 0:
            self.start_sim()
        return ""

    def step_clock(self, step_s: float) -> str:
        self.wall_offset += step_s
        return f"wall clock stepped {step_s:+.0f} s"

    def stop_sim(self) -> None:
        if self.sim is not None and self.sim.poll() is None:
            self.sim.terminate()
            try:
                self.sim.wait(10)
            except subprocess.TimeoutExpired:
                self.sim.kill()
                self.sim.wait(5)


@contextlib.contextmanager
def tmpfs(path: Path) -> Iterator[bool]:
    """A small tmpfs at ``path`` when this process may mount one (root), else a plain dir."""
    ok = mount_tmpfs(path, TMPFS_MB << 20) is None
    try:
        yield ok
    finally:
        if ok:
            unmount(path)


def inject(world: World, name: str, *, begin: bool) -> str:
    """Start (``begin``) or end one fault; returns a note for the record."""
    if name == "disk_full" and not world.tmpfs:
        return "skipped: tmpfs mount not permitted here"
    actions: dict[str, tuple[Callable[[], str], Callable[[], str]]] = {
        "disk_full": (lambda: f"filled {fill(world.state).stat().st_size / 2**20:.1f} MiB",
                      lambda: _unlink(world.state / "filler")),
        "broker_down": (lambda: _do(world.broker.stop), lambda: _do(world.broker.start)),
        "clock_back": (lambda: world.step_clock(-HOUR_S), lambda: ""),
        "clock_forward": (lambda: world.step_clock(HOUR_S), lambda: ""),
        "source_crash": (lambda: _do(world.crash.set, "every Modbus poll raises"),
                         lambda: _do(world.crash.clear)),
        "device_gone": (lambda: world.device_gone(True), lambda: world.device_gone(False)),
    }  # fmt: skip
    on, off = actions[name]
    return on() if begin else off()


def _end(world: World, rec: FaultRecord, now: float) -> None:
    for part in rec.name.split("+"):
        inject(world, part, begin=False)
    rec.end_s = now


def _do(action: Callable[[], object], note: str = "") -> str:
    action()
    return note


def _unlink(*paths: Path) -> str:
    for p in paths:
        p.unlink(missing_ok=True)
    return ""


def _config(work: Path, state: Path, bundle: Path, pub: Path, modbus: int, mqtt: int) -> Path:
    demo = (ROOT / "firmware_configs" / "demo.toml").read_text()
    sources = demo[demo.index("[[sources]]") : demo.index("[metrics]")]
    text = f"""
machine_id = "soak"
state_dir = "{state}"
[model]
bundle = "{bundle}"
trust_key = "{pub}"
{sources.replace("port = 5020", f"port = {modbus}")}
[outbox]
max_mb = 4.0
retry_s = 2.0
[mqtt]
host = "127.0.0.1"
port = {mqtt}
heartbeat_s = 10
backoff_initial_s = 0.5
backoff_max_s = 5
[metrics]
enabled = false
"""
    path = work / "agent.toml"
    path.write_text(text)
    return path


def _log_to_file(path: Path) -> logging.Handler:
    """The agent's log lines go to a file (the bench prints its own report), without
    touching the root logger of a host process such as pytest."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("edge_agent")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


def _stop_logging(handler: logging.Handler) -> None:
    log = logging.getLogger("edge_agent")
    log.removeHandler(handler)
    log.propagate = True
    handler.close()


def _longest_gap(times: list[float], start: float, end: float) -> float:
    """Longest stretch in [start, end] without a row (``times``: when rows advanced)."""
    inside = [t for t in times if start <= t <= end]
    edges = [start, *inside, end]
    return max(b - a for a, b in itertools.pairwise(edges))


def run(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    from edge_agent.agent import Agent
    from edge_agent.clock import Clock
    from edge_agent.config.load import load_config

    bundle, pub = bundle_from_args(a, work)
    modbus = free_port()
    broker = Mosquitto(work / "broker")
    broker.start()
    with tmpfs(work / "state") as mounted:
        cfg_path = _config(work, work / "state", bundle, pub, modbus, broker.port)
        world = World(
            work, work / "state", broker,
            [sys.executable, "-m", "edge_agent", "simulate", "--config", str(cfg_path),
             "--seed", "7"],
            tmpfs=mounted,
        )
        world.start_sim()
        agent_log = _log_to_file(work / "agent.log")
        clock = Clock(wall=lambda: time.time() + world.wall_offset, mono=time.monotonic)
        cfg = load_config(cfg_path)
        sub = Subscriber(broker.port, "edge/soak/events", persistent=True,
                         client_id="soak-consumer").start()
        agent = Agent(cfg_path, cfg, clock=clock)
        source = agent.sources[0]
        real_read: Callable[..., Any] = source._read_device  # type: ignore[attr-defined]

        def read_device(*args: Any) -> Any:  # the source_crash fault
            if world.crash.is_set():
                raise RuntimeError("injected fault: a bug in the poll loop")
            return real_read(*args)

        source._read_device = read_device  # type: ignore[attr-defined]
        loop = threading.Thread(target=lambda: (agent.start(), agent.run()), name="agent")
        t0 = time.monotonic()
        loop.start()
        total_s = a.minutes * 60
        slot = total_s / (len(FAULTS) + 1)
        plan = [(slot * (i + 0.5), name) for i, name in enumerate(FAULTS)]
        records: list[FaultRecord] = []
        active: list[FaultRecord] = []
        samples: list[tuple[float, int, int, float, int]] = []
        row_times: list[float] = []
        last_rows = 0
        try:
            while (now := time.monotonic() - t0) < total_s:
                rows = agent.counts["rows"]
                if rows > last_rows:
                    row_times.append(now)
                    last_rows = rows
                samples.append((now, rows, agent.counts["windows"], _rss_mb(), _fds()))
                while plan and now >= plan[0][0]:
                    _, name = plan.pop(0)
                    notes = [inject(world, part, begin=True) for part in name.split("+")]
                    rec = FaultRecord(name, now, note="; ".join(n for n in notes if n))
                    records.append(rec)
                    active.append(rec)
                for rec in list(active):
                    if now >= rec.start_s + a.fault_s:
                        _end(world, rec, now)
                        active.remove(rec)
                time.sleep(SAMPLE_EVERY_S)
        finally:
            for rec in active:
                _end(world, rec, time.monotonic() - t0)
            dropped = lambda: agent.outbox.dropped() + agent.outbox.health()["memory_dropped"]  # noqa: E731
            emitted = agent.counts["events"]
            deadline = time.monotonic() + DRAIN_WAIT_S
            while time.monotonic() < deadline:
                got = {m.json()["id"] for m in sub.messages}
                if len(got) + dropped() >= emitted:
                    break
                time.sleep(0.5)
            agent.request_stop()
            loop.join(60)
            sub.stop()
            world.stop_sim()
            broker.stop()
            _stop_logging(agent_log)
        received = len({m.json()["id"] for m in sub.messages})
    for rec in records:
        rec.rows_during = sum(
            1 for t in row_times if rec.start_s <= t <= rec.end_s
        )
        rec.longest_no_row_s = round(_longest_gap(row_times, rec.start_s, rec.end_s), 1)
    warm = [s for s in samples if s[0] >= 60] or samples
    tenth = max(1, len(warm) // 10)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    buckets: dict[int, list[int]] = {}
    for t, rows, windows, _, _ in samples:
        buckets.setdefault(int(t // BUCKET_S), [rows, windows])[0:2] = [rows, windows]
    per_bucket = []
    prev = [0, 0]
    for k in sorted(buckets):
        cur = buckets[k]
        per_bucket.append({"t_s": k * BUCKET_S, "rows": cur[0] - prev[0],
                           "windows": cur[1] - prev[1]})
        prev = cur
    health = agent.health()
    return {
        "minutes": a.minutes,
        "fault_s": a.fault_s,
        "tmpfs_state_dir": mounted,
        "faults": [vars(r) | {"start_s": round(r.start_s, 1), "end_s": round(r.end_s, 1)}
                   for r in records],
        "rows": agent.counts["rows"],
        "windows": agent.counts["windows"],
        "longest_no_row_s_overall": round(_longest_gap(row_times, 60.0, samples[-1][0]), 1)
        if samples and samples[-1][0] > 60 else None,
        "events_emitted": emitted,
        "events_received_unique": received,
        "events_dropped_counted": dropped(),
        "events_lost": emitted - received - dropped(),
        "counts": dict(agent.counts),
        "outbox": health.get("outbox"),
        "threads": health["threads"],
        "rss_mb_start": round(warm[0][3], 1),
        "rss_mb_max": round(max(s[3] for s in samples), 1),
        "rss_growth_mb": round(mean([s[3] for s in warm[-tenth:]])
                               - mean([s[3] for s in warm[tenth : 2 * tenth] or warm[:1]]), 2),
        "fds_first": samples[0][4],
        "fds_last": samples[-1][4],
        "fds_max": max(s[4] for s in samples),
        "per_10s": per_bucket,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the soak")
    ap.add_argument("--fault-s", type=float, default=60.0, help="how long each fault lasts")
    add_bundle_args(ap)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fault_soak.json")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fault-soak-") as tmp:
        result = run(a, Path(tmp))
    report = {
        "benchmark": "edge agent under scheduled faults: live Modbus, Mosquitto, tmpfs state",
        **result,
        "targets": {"events_lost": 0, "rss_growth_mb_max": 5,
                    "longest_no_row_s": "no longer than the fault's own span"},
        "machine": machine(),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "per_10s"}, indent=2))
    return report


if __name__ == "__main__":
    main()
