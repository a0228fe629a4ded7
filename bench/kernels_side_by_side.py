"""The device pipeline on the JIT and on the ahead-of-time kernels, side by side in one run.

Part of ``bench/pipeline_throughput.py`` (its ``aot`` block). The backend is chosen once per
process (``EDGE_KERNELS``, see ``edge_agent.kernels.dispatch``), so each backend runs in a
fresh child process pinned to the same CPU, on the same bundle and live file, timing the
same batch and streaming loops as the parent's ``ours`` block; the children alternate
(JIT, AOT host, AOT generic, JIT, ...) so that a change in the machine's load hits them alike,
and the median over rounds is kept. The modules are built first, each build timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Builds compared with the JIT: host (tuned for this CPU, the install-time default) and
# generic (any CPU of the architecture: what a prebuilt wheel would carry).
TARGETS = ("host", "generic")
CHILD = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bench.pipeline_throughput import _one_core, bench_ours_batch, bench_ours_stream
_one_core()
from edge_agent.bundle.verify import verify_bundle
from edge_agent.data.table import read_table
from edge_agent.kernels import backend
from edge_agent.model_slot import load_cascade
bundle = verify_bundle(Path(sys.argv[2]), Path(sys.argv[3]))
m = bundle.manifest
cascade = load_cascade(bundle, num_threads=1)
live = read_table(sys.argv[4], label_cols=["anomaly"], channels=m.channel_names)
live = live.select(m.channel_names)
batch = bench_ours_batch(live, m, cascade, int(sys.argv[5]))
batch.pop("_result")
stream = bench_ours_stream(live, m, cascade, int(sys.argv[6]))
stream.pop("_order")
print(json.dumps({"backend": backend().kind, "batch": batch, "streaming": stream}))
"""


def build_modules(work: Path) -> dict[str, dict[str, Any]]:
    """Build the kernels for each target into ``work/aot-<target>``; seconds and size."""
    out: dict[str, dict[str, Any]] = {}
    for target in TARGETS:
        d = work / f"aot-{target}"
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "edge_agent.kernels.build", "--out", str(d), "--target-cpu",
             target],
            cwd=ROOT, env=_env(None, None), check=True, capture_output=True, text=True,
        )  # fmt: skip
        (module,) = d.glob("_aot_*")
        out[target] = {
            "dir": str(d),
            "build_s": round(time.perf_counter() - t0, 1),
            "size_mb": round(module.stat().st_size / 1e6, 2),
        }
    return out


def _env(mode: str | None, kernels_dir: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_KERNELS")}
    env["PYTHONPATH"] = str(ROOT)
    if mode:
        env["EDGE_KERNELS"] = mode
    if kernels_dir:
        env["EDGE_KERNELS_DIR"] = kernels_dir
    return env


def _child(mode: str, kernels_dir: str | None, args: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), *args],
        env=_env(mode, kernels_dir), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} child failed: {proc.stderr[-2000:]}")
    got: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if got["backend"] != mode:
        raise RuntimeError(f"asked for {mode}, the child ran {got['backend']}")
    return got


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of the figures that matter, with every round's value."""

    def pick(run: dict[str, Any], path: tuple[str, ...]) -> float:
        v: Any = run
        for k in path:
            v = v[k]
        return float(v)

    paths = {
        "batch_channel_samples_per_s": ("batch", "channel_samples_per_s"),
        "stream_p50_ms": ("streaming", "latency", "overall", "p50_ms"),
        "stream_p99_ms": ("streaming", "latency", "overall", "p99_ms"),
    }
    out: dict[str, Any] = {}
    for name, path in paths.items():
        vals = sorted(pick(r, path) for r in runs)
        out[name] = (
            vals[len(vals) // 2] if len(vals) % 2 else sum(vals[len(vals) // 2 - 1 :][:2]) / 2
        )
        out[name + "_rounds"] = [pick(r, path) for r in runs]
    return out


def side_by_side(
    bundle: Path, pub: Path, live_csv: Path, work: Path, *, repeats: int, windows: int, rounds: int
) -> dict[str, Any]:
    """The ``aot`` block of the throughput report."""
    builds = build_modules(work)
    args = [str(bundle), str(pub), str(live_csv), str(repeats), str(windows)]
    runs: dict[str, list[dict[str, Any]]] = {"jit": [], **{f"aot_{t}": [] for t in TARGETS}}
    for _ in range(rounds):
        runs["jit"].append(_child("jit", None, args))
        for t in TARGETS:
            runs[f"aot_{t}"].append(_child("aot", builds[t]["dir"], args))
    figures = {name: _median(r) for name, r in runs.items()}
    jit = figures["jit"]
    ratio = {
        name: {
            "batch": round(
                f["batch_channel_samples_per_s"] / jit["batch_channel_samples_per_s"], 3
            ),
            "stream_p50": round(f["stream_p50_ms"] / jit["stream_p50_ms"], 3),
            "stream_p99": round(f["stream_p99_ms"] / jit["stream_p99_ms"], 3),
        }
        for name, f in figures.items()
        if name != "jit"
    }
    return {
        "how": (
            "fresh child processes on the same CPU, alternating jit / aot host / aot generic, "
            f"{rounds} rounds, medians; batch = run_pipeline over the live file ({repeats} "
            f"timed repeats each), streaming = one row per push, {windows} windows"
        ),
        "build": {t: {k: v for k, v in b.items() if k != "dir"} for t, b in builds.items()},
        **figures,
        "ratio_to_jit": ratio,
        "full_runs": runs,
    }
