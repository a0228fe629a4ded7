"""Agent resources: start-up time, resident memory, import cost per dependency, and a soak, with
the kernels compiled ahead of time (the gateway's case) and on Numba's JIT side by side.

Runs the real daemon (``python -m edge_agent run``) in a subprocess, as systemd would, with a
replay source feeding simulator data at an accelerated pace and, when ``mosquitto`` is on the
PATH, a real local broker. Measures:

* the ahead-of-time build (``scripts/build-kernels``) for this CPU and for a generic one;
* import cost: RSS after each dependency the daemon imports, in one process where
  ``import numba`` fails (as on a gateway), and what importing Numba would add;
* start-up: spawn → ``READY=1`` (model verified and loaded, kernels loaded, sources started):
  on the compiled module, checking that nothing was written to a JIT cache; on the JIT with a
  cold and a warm cache;
* soak: RSS and open file descriptors sampled through the run, on the compiled module with
  Numba absent, then a shorter run on the JIT; growth = last tenth vs the tenth after warm-up.

    python bench/agent_resources.py    # 30-minute soak -> bench/results/agent_resources.json
    python bench/agent_resources.py --soak-minutes 0.5 --out X   # CI smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, add_bundle_args, bundle_from_args, machine, start_broker

SAMPLE_EVERY_S = 5.0
READY_TIMEOUT_S = 300.0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# Lines of /proc/PID/smaps_rollup kept in the memory breakdown, and their names here.
ROLLUP = {
    "Rss": "rss", "Pss": "pss", "Shared_Clean": "shared_clean", "Private_Clean": "private_clean",
    "Private_Dirty": "private_dirty", "Anonymous": "anonymous",
}  # fmt: skip


def _breakdown(pid: int) -> dict[str, float]:
    """Where the resident memory is (MB): file pages shared with other processes (the venv's
    libraries, mapped by every Python here too, which MADV_PAGEOUT leaves alone) vs private."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ROLLUP:
            out[ROLLUP[key] + "_mb"] = round(int(rest.split()[0]) / 1024, 1)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("RssFile:", "RssAnon:")):
            out[line.split(":")[0].lower().replace("rss", "rss_") + "_mb"] = round(
                int(line.split()[1]) / 1024, 1
            )
        elif line.startswith("VmHWM:"):  # the peak since start: what MemoryMax must cover
            out["peak_rss_mb"] = round(int(line.split()[1]) / 1024, 1)
    out["uss_mb"] = round(out.get("private_clean_mb", 0.0) + out.get("private_dirty_mb", 0.0), 1)
    return out


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _probe(code: str, env: dict[str, str]) -> dict[str, float]:
    """Run ``code`` in a fresh interpreter; it prints a JSON dict (RSS etc.)."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


_RSS = (
    "def rss():\n"
    "    for l in open('/proc/self/status'):\n"
    "        if l.startswith('VmRSS:'): return int(l.split()[1])/1024\n"
)


# What the daemon imports, in the order it needs them; each probe step adds one.
IMPORT_STEPS = (
    ("python", "pass"),
    ("numpy", "import numpy"),
    ("pydantic", "import pydantic"),
    ("cryptography", "from cryptography.hazmat.primitives.asymmetric import ed25519"),
    ("litert", "from edge_agent.interpreter import _BACKENDS\n_BACKENDS[0][1]()"),
    ("paho_mqtt", "import paho.mqtt.client"),
    ("pymodbus", "import pymodbus.client"),
    ("pyserial", "import serial"),
    ("prometheus_client", "import prometheus_client"),
    ("edge_agent_agent", "import edge_agent.agent"),
    ("compiled_kernels", "import edge_agent.kernels as k\nk.require()\nimport edge_agent.pipeline"),
)


def _blocker(work: Path) -> Path:
    """A PYTHONPATH entry under which ``import numba`` and ``import llvmlite`` fail."""
    d = work / "no-numba"
    d.mkdir(exist_ok=True)
    for name in ("numba", "llvmlite"):
        (d / f"{name}.py").write_text(f"raise ImportError('{name} is absent here')\n")
    return d


def build_kernels(work: Path) -> tuple[Path, dict[str, Any]]:
    """Build the module for this CPU (used below) and for a generic one; seconds and size."""
    out: dict[str, Any] = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_KERNELS")}
    for target in ("generic", "host"):
        d = work / f"aot-{target}"
        t = time.perf_counter()
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "build-kernels"), "--out", str(d),
             "--target-cpu", target],
            env={**env, "PYTHON": sys.executable}, check=True, capture_output=True, cwd=ROOT,
        )  # fmt: skip
        module = next(d.glob("_aot_*"))
        out[target] = {
            "build_s": round(time.perf_counter() - t, 1),
            "module_mb": round(module.stat().st_size / 1e6, 2),
        }
    return work / "aot-host", out


def aot_env(work: Path, aot_dir: Path, cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{_blocker(work)}:{ROOT}",
        "EDGE_KERNELS": "aot",
        "EDGE_KERNELS_DIR": str(aot_dir),
        "NUMBA_CACHE_DIR": str(cache),  # must stay empty
        # As systemd/edge-agent.service sets them: numpy's BLAS on one thread.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }


def import_costs(env: dict[str, str]) -> dict[str, float]:
    """RSS (MB) after each step of IMPORT_STEPS, and each step's increment, numba absent."""
    code = _RSS + "import json\nout = {}\n"
    for name, stmt in IMPORT_STEPS:
        code += f"{stmt}\nout[{name!r}] = rss()\n"
    code += "print(json.dumps(out))"
    after = _probe(code, env)
    steps: dict[str, float] = {}
    last = 0.0
    for name, _ in IMPORT_STEPS:
        steps[f"{name}_plus_mb"] = round(after[name] - last, 1)
        last = after[name]
    steps["total_rss_mb"] = round(last, 1)
    return steps


def jit_costs(bundle: Path, pub: Path, cache: Path) -> dict[str, Any]:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT),
           "EDGE_KERNELS": "jit"}  # fmt: skip
    base = _probe(
        _RSS + "import json, numpy\nfrom edge_agent.interpreter import _BACKENDS\n"
        "_BACKENDS[0][1]()\nprint(json.dumps({'rss_mb': rss()}))",
        env,
    )
    with_numba = _probe(
        _RSS + "import json, numpy, numba\nfrom edge_agent.interpreter import "
        "_BACKENDS\n_BACKENDS[0][1]()\nprint(json.dumps({'rss_mb': rss()}))",
        env,
    )
    load = (
        _RSS + "import json, time\nt=time.perf_counter()\n"
        "from edge_agent.config.model import AgentConfig\n"
        "from edge_agent.model_slot import slot_for_config\n"
        f"cfg = AgentConfig.model_validate({{'machine_id':'b','model':{{'bundle':{str(bundle)!r},"
        f"'trust_key':{str(pub)!r}}},'sources':[{{'type':'replay','path':'x.csv'}}]}})\n"
        "m=slot_for_config(cfg); t1=time.perf_counter(); m.warm_up(); t2=time.perf_counter()\n"
        "print(json.dumps({'rss_mb': rss(), 'import_and_load_s': t1-t, 'warm_up_s': t2-t1}))"
    )
    shutil.rmtree(cache, ignore_errors=True)
    cold = _probe(load, env)
    warm = _probe(load, env)
    return {
        "interpreter_only_rss_mb": round(base["rss_mb"], 1),
        "plus_numba_import_rss_mb": round(with_numba["rss_mb"], 1),
        "pipeline_warm_cold_cache": {k: round(v, 2) for k, v in cold.items()},
        "pipeline_warm_warm_cache": {k: round(v, 2) for k, v in warm.items()},
    }


def _numba_version() -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import numba; print(numba.__version__)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def _config(
    work: Path, bundle: Path, pub: Path, data: Path, speed: float, port: int | None
) -> Path:
    text = f"""
machine_id = "bench"
state_dir = "{work / "state"}"
[model]
bundle = "{bundle}"
trust_key = "{pub}"
[[sources]]
type = "replay"
path = "{data}"
speed = {speed}
loop = true
[metrics]
port = 0
[log]
level = "info"  # the last line, "stopped: rows ...", proves it kept working
"""
    if port is not None:
        text += f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nheartbeat_s = 10\n'
    p = work / "agent.toml"
    p.write_text(text)
    return p


def run_agent(config: Path, env: dict[str, str], minutes: float) -> dict[str, Any]:
    """Spawn the daemon with a notify socket; time READY; sample RSS and fds; SIGTERM it."""
    sock_path = config.parent / "notify.sock"
    sock_path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(1.0)
    env = {**env, "NOTIFY_SOCKET": str(sock_path)}
    log_path = config.parent / "agent.log"
    log_fh = log_path.open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
        env=env,
        cwd=ROOT,
        # A file, not a pipe: a full pipe would block the agent's logging and stall it.
        stdout=log_fh,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready_s = None
    try:
        while ready_s is None and time.perf_counter() - t0 < READY_TIMEOUT_S:
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited early: {log_path.read_text()[-2000:]}")
            try:
                msg = sock.recv(4096).decode()
            except TimeoutError:
                continue
            if "READY=1" in msg:
                ready_s = time.perf_counter() - t0
        samples: list[tuple[float, float, int]] = []
        end = time.perf_counter() + minutes * 60
        while time.perf_counter() < end:
            samples.append((time.perf_counter() - t0, _rss_mb(proc.pid), _fds(proc.pid)))
            time.sleep(min(SAMPLE_EVERY_S, max(0.0, end - time.perf_counter())))
        samples.append((time.perf_counter() - t0, _rss_mb(proc.pid), _fds(proc.pid)))
        memory_at_end = _breakdown(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        sock.close()
        log_fh.close()
    # The agent's last line says how much it did: proof it kept working through the soak.
    done = re.findall(
        r"stopped: rows (\d+), windows (\d+), stage2 (\d+), events (\d+)", log_path.read_text()
    )
    rows, windows, stage2, events = (int(x) for x in done[-1]) if done else (0, 0, 0, 0)
    n = len(samples)
    tenth = max(1, n // 10)
    early = samples[tenth : 2 * tenth] or samples[:1]
    late = samples[-tenth:]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    ready_rss = next((x[1] for x in samples), float("nan"))
    return {
        "ready_s": None if ready_s is None else round(ready_s, 2),
        "rss_mb_at_ready": round(ready_rss, 1),
        "exit_code": proc.returncode,
        "rows_processed": rows,
        "rows_per_s": round(rows / max(samples[-1][0] - (ready_s or 0.0), 1e-9), 1),
        "windows": windows,
        "stage2_windows": stage2,
        "events": events,
        "samples": n,
        "rss_mb_steady_median": round(
            sorted(s[1] for s in samples[tenth:])[len(samples[tenth:]) // 2], 1
        ),
        "rss_mb_max": round(max(s[1] for s in samples), 1),
        "rss_growth_mb": round(mean([s[1] for s in late]) - mean([s[1] for s in early]), 2),
        "memory_at_end": memory_at_end,
        "fds_first": samples[0][2],
        "fds_last": samples[-1][2],
        "fds_max": max(s[2] for s in samples),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--soak-minutes", type=float, default=30.0)
    ap.add_argument("--speed", type=float, default=100.0, help="replay pace, times real time")
    ap.add_argument(
        "--jit-share", type=float, default=0.2, help="JIT run length, share of the soak's"
    )
    add_bundle_args(ap)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "agent_resources.json")
    a = ap.parse_args(argv)
    from edge_agent.simulator import simulate_plant

    with tempfile.TemporaryDirectory(prefix="agent-res-") as tmp:
        work = Path(tmp)
        bundle, pub = bundle_from_args(a, work)
        data = work / "live.csv"
        simulate_plant(rows=86_400, seed=31).write_csv(data)
        aot_dir, builds = build_kernels(work)
        cache = work / "numba-cache"
        aot_cache = work / "aot-numba-cache"
        device = aot_env(work, aot_dir, aot_cache)
        imports = import_costs(device)
        jit = jit_costs(bundle, pub, cache)
        jit_env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT),
                   "EDGE_KERNELS": "jit"}  # fmt: skip
        broker, port = start_broker(work)
        try:
            cfg = _config(work, bundle, pub, data, a.speed, port)
            soak = run_agent(cfg, device, a.soak_minutes)
            kept = run_agent(
                cfg, {**device, "EDGE_AGENT_PAGEOUT": "0"}, a.soak_minutes * a.jit_share
            )
            cache_written = (
                sorted(str(p) for p in aot_cache.rglob("*")) if aot_cache.exists() else []
            )
            shutil.rmtree(cache, ignore_errors=True)
            cold = run_agent(cfg, jit_env, 0.05)
            jit_run = run_agent(cfg, jit_env, a.soak_minutes * a.jit_share)
        finally:
            if broker is not None:
                broker.terminate()
                broker.wait(10)
    report = {
        "benchmark": "edge agent daemon: start-up, memory, soak at accelerated replay; "
        "kernels compiled ahead of time (numba absent) vs Numba's JIT",
        "kernels_build": {**builds, "numba": _numba_version()},
        "startup_ready_s": {
            "aot": soak["ready_s"],
            "cold_numba_cache": cold["ready_s"],
            "warm_numba_cache": jit_run["ready_s"],
        },
        "aot_jit_cache_files_written": cache_written,
        "import_cost_numba_absent": imports,
        "jit": {**jit, "agent": jit_run},
        "aot_without_page_release": {
            "note": "the same AOT daemon with EDGE_AGENT_PAGEOUT=0 (edge_agent.service.pages "
            "skipped), for the release's effect; shorter run",
            **kept,
        },
        "soak": {
            "kernels": "aot, numba absent",
            "minutes": a.soak_minutes,
            "replay_speed": a.speed,
            "broker": port is not None,
            **soak,
        },
        "targets": {
            "rss_steady_mb_max": 100,
            "rss_steady_mb_goal": 64,
            "startup_ready_s_max": 2,
            "rss_growth_mb_max": 5,
            "fd_growth_max": 0,
        },
        "machine": machine(),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
