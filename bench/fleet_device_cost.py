"""The device cost of one local fleet-learning round: CPU seconds and peak memory.

Run by ``bench/fleet_learning.py`` as a fresh subprocess (or by hand): it imports only the
gateway's side (``edge_agent.learn``: numpy, no TensorFlow), loads the global weights and a
buffer-sized set of normalized windows written by the caller, records the process's peak RSS
(``VmHWM``) after the imports and once the data is loaded, runs
``edge_agent.learn.local.train_local`` once with the given settings, and prints one JSON
object: the round's CPU seconds (its own thread clock and the process's user + system time),
wall time, peak RSS at each point, and whether any desk stack was imported. With
``--in-child`` the round trains as the agent runs it, in a nice-19 child process
(``edge_agent.learn.isolated.train_in_child``): the wall time then includes the child's start,
and the child's own peak RSS is reported beside this process's.

    python bench/fleet_device_cost.py --weights W.npz --windows X.npy --layers L.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DESK_MODULES = ("tensorflow", "keras", "sklearn", "pandas")


def vm_hwm_mib() -> float:
    """Peak resident set size of this process so far (VmHWM), MiB: the agent's own reading."""
    from edge_agent.learn.isolated import peak_rss_mib

    peak = peak_rss_mib()
    return float("nan") if peak is None else peak


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, required=True, help="WeightSet npz (global model)")
    ap.add_argument("--windows", type=Path, required=True, help="float32 (N, W, C) .npy")
    ap.add_argument("--layers", type=Path, required=True, help="learning.layers as JSON")
    ap.add_argument("--epochs", type=int, default=None, help="local epochs (default: [learn])")
    ap.add_argument("--max-windows", type=int, default=None, help="default: [learn]")
    ap.add_argument(
        "--in-child", action="store_true", help="train in a child process, as the agent does"
    )
    a = ap.parse_args(argv)
    for flag, path in (("--weights", a.weights), ("--windows", a.windows), ("--layers", a.layers)):
        if not path.is_file():
            ap.error(f"{flag} {path}: no such file")

    import numpy as np

    from edge_agent.bundle.manifest import LearningLayerSpec
    from edge_agent.learn.config import DEFAULT_EPOCHS, DEFAULT_MAX_WINDOWS
    from edge_agent.learn.isolated import train_in_child
    from edge_agent.learn.local import LocalTrainingConfig, train_local
    from edge_agent.learn.weights import WeightSet

    hwm_imports = vm_hwm_mib()
    weights = WeightSet.from_npz_bytes(a.weights.read_bytes(), source=str(a.weights))
    windows = np.load(a.windows, allow_pickle=False)
    layers = [LearningLayerSpec.model_validate(x) for x in json.loads(a.layers.read_text())]
    cfg = LocalTrainingConfig(
        epochs=a.epochs or DEFAULT_EPOCHS, max_windows=a.max_windows or DEFAULT_MAX_WINDOWS
    )
    hwm_before = vm_hwm_mib()
    cpu0, wall0 = cpu_s(), time.perf_counter()
    if a.in_child:
        res = train_in_child(weights, windows, cfg, [x.activation for x in layers])
    else:
        res = train_local(weights, windows, cfg, layers)
    report: dict[str, object] = {
        "in_child": a.in_child,
        "windows_given": int(windows.shape[0]),
        "windows_trained": res.samples,
        "window_shape": list(windows.shape[1:]),
        "parameters": weights.size,
        "epochs": res.epochs_run,
        "steps": res.steps,
        "batch_size": cfg.batch_size,
        "train_thread_cpu_s": round(res.cpu_s, 3),
        "process_cpu_s": round(cpu_s() - cpu0, 3),
        "wall_s": round(time.perf_counter() - wall0, 3),
        "vm_hwm_mib_after_imports": round(hwm_imports, 1),
        "vm_hwm_mib_before": round(hwm_before, 1),
        "vm_hwm_mib_after": round(vm_hwm_mib(), 1),
        # The training child's own VmHWM, read by the child (RUSAGE_CHILDREN would count the
        # parent's pages the child held between its fork and its exec).
        "child_peak_rss_mib": None if res.peak_rss_mib is None else round(res.peak_rss_mib, 1),
        "loss_first": round(res.loss_first, 6),
        "loss_last": round(res.loss_last, 6),
        "desk_modules_imported": [m for m in DESK_MODULES if m in sys.modules],
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
