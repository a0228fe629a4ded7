"""Resident memory of the daemon when nothing else maps its libraries, as on a gateway.

On this desk every Python process (the bench itself, tests, other tools) maps the same venv
libraries, so their pages are shared and ``madvise(MADV_PAGEOUT)`` (``edge_agent.service.
pages``) leaves them resident: ``agent_resources.py`` shows the release doing nothing here.
This bench copies the daemon's compiled dependencies (numpy, LiteRT, cryptography, pydantic-core,
the MQTT/Modbus stacks...) and ``libpython`` into a private directory, runs the daemon on the
compiled kernels with Numba absent from those copies (as the only process mapping them), with
and without the page release, and reports RSS and where it is.

    python bench/agent_private_libs.py [--minutes 1] [--out bench/results/agent_private_libs.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import agent_resources as ar
from common import ROOT, add_bundle_args, bundle_from_args, machine, start_broker

BUNDLE_PACKAGES = (
    "numpy", "numpy.libs", "ai_edge_litert", "cryptography", "pydantic", "pydantic_core",
    "paho", "pymodbus", "serial", "prometheus_client", "annotated_types", "typing_extensions.py",
    "typing_inspection", "cffi",
)  # fmt: skip
KEPT = ("ready_s", "rss_mb_at_ready", "rss_mb_steady_median", "rss_mb_max", "rows_processed",
        "exit_code", "memory_at_end")  # fmt: skip


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=1.0, help="length of each run")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/agent_private_libs.json")
    add_bundle_args(ap)
    a = ap.parse_args(argv)
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
        try:
            cfg = ar._config(work, bundle, pub, work / "live.csv", 100.0, port)
            for name, extra in (("released", {}), ("kept", {"EDGE_AGENT_PAGEOUT": "0"})):
                r = ar.run_agent(cfg, {**env, **extra}, a.minutes)
                runs[name] = {k: r[k] for k in KEPT}
        finally:
            if broker is not None:
                broker.terminate()
                broker.wait(10)
    report = {
        "benchmark": "edge agent on the compiled kernels, numba absent, its libraries private "
        "copies (nothing else maps them, as on a gateway), with and without the page release",
        "minutes_each": a.minutes,
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
