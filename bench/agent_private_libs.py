"""Resident memory of the daemon when nothing else maps its libraries, as on a gateway.

On this desk every Python process (the bench itself, tests, other tools) maps the same venv
libraries, so their pages are shared and ``madvise(MADV_PAGEOUT)`` (``edge_agent.service.
pages``) leaves them resident: ``agent_resources.py`` shows the release doing nothing here.
This bench copies the daemon's compiled dependencies (numpy, LiteRT, cryptography, pydantic-core,
the MQTT/Modbus stacks...) and ``libpython`` into a private directory, runs the daemon on the
compiled kernels with Numba absent from those copies (as the only process mapping them), with
and without the page release, and reports RSS and where it is.

With ``--source modbus`` the daemon polls the plant simulator over real Modbus TCP, once a
second as on a gateway (``python -m edge_agent simulate`` serves it), instead of replaying a
recorded CSV at 100x real time: the replay source holds its whole file in memory (about 5 MB
for the 86,400 rows here) and imports no Modbus stack, so neither figure alone is a gateway's.

    python bench/agent_private_libs.py [--minutes 1] [--source replay|modbus]
        [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import agent_resources as ar
from common import ROOT, add_bundle_args, bundle_from_args, machine, start_broker

BUNDLE_PACKAGES = (
    "numpy", "numpy.libs", "ai_edge_litert", "cryptography", "pydantic", "pydantic_core",
    "paho", "pymodbus", "serial", "prometheus_client", "annotated_types", "typing_extensions.py",
    "typing_inspection", "cffi",
)  # fmt: skip
SIM_READY_S = 60.0  # the simulator imports pymodbus and the plant model, then listens
KEPT = ("ready_s", "rss_mb_at_ready", "rss_mb_steady_median", "rss_mb_max", "rows_processed",
        "windows", "events", "exit_code", "memory_at_end")  # fmt: skip


def private_copies(dest: Path) -> Path:
    """Copy the daemon's dependencies and libpython under ``dest``; the site directory."""
    site = Path(sysconfig.get_paths()["purelib"])
    out = dest / "site"
    out.mkdir(parents=True)
    for name in BUNDLE_PACKAGES:
        src = site / name
        if src.is_dir():
            shutil.copytree(src, out / name)
        elif src.exists():
            shutil.copy2(src, out / name)
    for so in site.glob("_cffi_backend*.so"):
        shutil.copy2(so, out / so.name)
    lib = dest / "lib"
    lib.mkdir()
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY")
    if libdir and ldlib and (Path(libdir) / ldlib).exists():
        shutil.copy2(Path(libdir) / ldlib, lib / ldlib)
        shutil.copy2(Path(libdir) / ldlib, lib / (ldlib + ".1.0"))
    return out


def modbus_config(work: Path, bundle: Path, pub: Path, port: int, broker: int | None) -> Path:
    """The bench's agent config with one Modbus TCP source polling the simulator each second."""
    from edge_agent.simulator import simulate_plant

    channels = simulate_plant(rows=100, seed=31).channels
    points = ",\n".join(
        f'  {{ channel = "{c}", address = {2 * i}, type = "float32" }}'
        for i, c in enumerate(channels)
    )
    cfg = ar._config(work, bundle, pub, work / "unused.csv", 1.0, broker)
    replay = cfg.read_text().split("[[sources]]")
    rest = replay[1].split("[metrics]", 1)[1]
    cfg.write_text(
        replay[0] + f'[[sources]]\ntype = "modbus_tcp"\nname = "sim"\nhost = "127.0.0.1"\n'
        f'port = {port}\n[[sources.devices]]\nname = "compressor"\nunit_id = 1\n'
        f"poll_period_s = 1.0\npoints = [\n{points},\n]\n[metrics]" + rest
    )
    return cfg


def start_simulator(cfg: Path, port: int) -> subprocess.Popen[bytes]:
    """``python -m edge_agent simulate`` serving the config's Modbus source (desk Python)."""
    log = (cfg.parent / "simulator.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "simulate", "--config", str(cfg), "--seed", "31"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + SIM_READY_S
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the simulator did not listen on {port}: see {log.name}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=1.0, help="length of each run")
    ap.add_argument("--source", choices=("replay", "modbus"), default="replay")
    ap.add_argument(
        "--out", type=Path, help="default: bench/results/agent_private_libs[_modbus].json"
    )
    add_bundle_args(ap)
    a = ap.parse_args(argv)
    suffix = "_modbus" if a.source == "modbus" else ""
    a.out = a.out or ROOT / "bench" / "results" / f"agent_private_libs{suffix}.json"
    from edge_agent.simulator import simulate_plant

    with tempfile.TemporaryDirectory(prefix="agent-priv-") as tmp:
        work = Path(tmp)
        bundle, pub = bundle_from_args(a, work)
        simulate_plant(rows=86_400, seed=31).write_csv(work / "live.csv")
        aot_dir, _ = ar.build_kernels(work)
        site = private_copies(work / "private")
        blocker = ar._blocker(work)
        broker, port = start_broker(work)
        env = {**os.environ, "PYTHONPATH": f"{site}:{blocker}:{ROOT}",
               "LD_LIBRARY_PATH": str(work / "private" / "lib"), "EDGE_KERNELS": "aot",
               "EDGE_KERNELS_DIR": str(aot_dir), "PYTHONNOUSERSITE": "1"}  # fmt: skip
        runs: dict[str, Any] = {}
        simulator = None
        try:
            if a.source == "modbus":
                sim_port = free_port()
                cfg = modbus_config(work, bundle, pub, sim_port, port)
                simulator = start_simulator(cfg, sim_port)
            else:
                cfg = ar._config(work, bundle, pub, work / "live.csv", 100.0, port)
            for name, extra in (("released", {}), ("kept", {"EDGE_AGENT_PAGEOUT": "0"})):
                r = ar.run_agent(cfg, {**env, **extra}, a.minutes)
                runs[name] = {k: r[k] for k in KEPT}
        finally:
            if simulator is not None:
                simulator.terminate()
                simulator.wait(10)
            if broker is not None:
                broker.terminate()
                broker.wait(10)
    report = {
        "benchmark": "edge agent on the compiled kernels, numba absent, its libraries private "
        "copies (nothing else maps them, as on a gateway), with and without the page release",
        "minutes_each": a.minutes,
        "source": "plant simulator over Modbus TCP, polled each second"
        if a.source == "modbus"
        else "replay of a recorded CSV at 100x real time",
        "broker": port is not None,
        "page_release": runs["released"],
        "no_page_release": runs["kept"],
        "machine": machine(),
    }
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
