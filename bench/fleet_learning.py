"""Fleet learning on a simulated non-IID fleet: local-only vs federated vs central, int8 too.

The fleet (``bench/fleet_data.py``): ``--machines`` compressors with different profiles, each
with ``--history-hours`` of its own history (normal) and ``--fresh-hours`` of labelled fresh
data with every fault kind; the desk's initial global model is ``trainer fit`` on the reference
compressor's ``--desk-hours``. Compared per machine, F1 and FAR on the fresh rows:

- local-only: ``trainer fit`` on the machine's own history, scored with its own threshold;
- federated: ``--rounds`` rounds (``bench/fleet_rounds.py``: the gateway's ``run_round`` with
  top-k ``--topk`` and error feedback, ``trainer federate`` writing every round's run), then
  each machine's own threshold on its history windows by the gateway's personalisation rule
  (``edge_agent.learn.personalise``; also reported without its bounds and with the global
  threshold); the initial global model with the same personalisation is reported beside it;
- central: ``trainer fit`` on the desk's and every machine's history pooled (the upper bound),
  with the same personalisation.

The final federated run is also exported (``export bundle``, int8) and scored per machine with
``edge_agent replay --local-history`` (the gateway's buffer selection and personalisation on
its history file). Then the sweeps (``bench/fleet_sweeps.py``): bytes per delta on the wire
against F1 over the top-k fraction, robustness to one bad gateway, and the device cost of a
local round.

    python bench/fleet_learning.py                     # -> bench/results/fleet_learning.json
    python bench/fleet_learning.py --machines 2 --history-hours 0.5 ...   # CI (see the test)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine  # noqa: E402

DEFAULT_FRACTIONS = "1.0,0.1,0.03,0.015,0.012,0.01,0.003"
TARGET_GAIN_OVER_LOCAL = 0.05
TARGET_GAP_TO_CENTRAL = 0.02


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", type=int, default=8, help="compressors in the fleet")
    ap.add_argument("--history-hours", type=float, default=4.0, help="local history per machine")
    ap.add_argument("--fresh-hours", type=float, default=12.0, help="scored data per machine")
    ap.add_argument("--desk-hours", type=float, default=24.0, help="the desk's reference history")
    ap.add_argument("--epochs", type=int, default=40, help="autoencoder epochs of trainer fit")
    ap.add_argument("--rounds", type=int, default=10, help="federated rounds R")
    ap.add_argument("--local-epochs", type=int, default=2, help="local epochs E per round")
    ap.add_argument("--max-windows", type=int, default=5000, help="windows per local round")
    ap.add_argument("--topk", type=float, default=0.01, help="top-k fraction of the main run")
    ap.add_argument("--fractions", default=DEFAULT_FRACTIONS, help="top-k curve, comma list")
    ap.add_argument("--attacks", default="scaled,sign_flip,random", help="robustness, comma list")
    ap.add_argument(
        "--rules", default="fedavg,fedavg_clip,median,trimmed_mean", help="robustness rules"
    )
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the main run's spread")
    ap.add_argument(
        "--curve-seeds", type=int, default=3, help="seeds per point of the top-k curve (F1 mean)"
    )
    ap.add_argument(
        "--poll-epochs",
        type=int,
        default=600,
        help="epochs of the round timed against a polling agent (0: skip that measurement)",
    )
    ap.add_argument("--poll-before-s", type=float, default=8.0, help="polls timed before it")
    ap.add_argument("--int8-machines", type=int, default=None, help="int8 check on N (all)")
    ap.add_argument("--seed", type=int, default=0, help="profiles and local shuffles")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fleet_learning.json")
    return ap.parse_args(argv)


def fit_run(table: Any, out: Path, epochs: int) -> Path:
    from trainer.config import load_config
    from trainer.fit import fit

    cfg = load_config(None)
    cfg.autoencoder.epochs = epochs
    fit(table, out, cfg, seed=0, overwrite=True)
    return out


def local_only(machines: list[Any], work: Path, epochs: int) -> list[dict[str, float]]:
    """``trainer fit`` on each machine's history; its own float run scores its fresh rows."""
    from fleet_eval import score

    from trainer.evaluate.run import load_scorer

    rows = []
    for m in machines:
        run = fit_run(m.history, work / f"local-{m.machine_id}", epochs)
        manifest, cascade, _, _ = load_scorer(run, None, None)
        rows.append(score(m.table, manifest, cascade, m.history_rows))
    return rows


def per_machine(
    g: Any,
    weights: Any,
    machines: list[Any],
    windows: dict[str, np.ndarray],
    *,
    ranking: bool = True,
    variants: tuple[str, ...] = ("personal",),
) -> dict[str, Any]:
    """Scores of ``weights`` on every machine: ``personal`` (the gateway's rule), ``unbounded``
    (the same without its bounds), ``global`` (the global threshold as is)."""
    from fleet_eval import global_cascade, local_threshold, mean_metrics, score, with_threshold

    manifest, cascade = global_cascade(g, weights)
    out: dict[str, Any] = {}
    for variant in variants:
        rows, scales = [], []
        for m in machines:
            man, cas = manifest, cascade
            if variant != "global":
                thr, info = local_threshold(
                    manifest, cascade, windows[m.machine_id], bounded=variant == "personal"
                )
                man, cas = with_threshold(manifest, cascade, thr)
                scales.append(info["scale"])
            rows.append(score(m.table, man, cas, m.history_rows, ranking=ranking))
        out[variant] = {"per_machine": rows, "mean": mean_metrics(rows), "threshold_scales": scales}
    return out


def machine_windows(g: Any, machines: list[Any]) -> dict[str, np.ndarray]:
    """Each machine's history as the global model's normalized windows (every window)."""
    from edge_agent.learn.history import history_windows

    return {m.machine_id: history_windows(m.history, g.manifest, hop=1)[0] for m in machines}


def central(machines: list[Any], desk: Any, work: Path, epochs: int) -> dict[str, Any]:
    from fleet_data import pooled
    from fleet_eval import load_global

    run = fit_run(pooled([desk] + [m.history for m in machines]), work / "central", epochs)
    g = load_global(run)
    return per_machine(
        g, g.weights, machines, machine_windows(g, machines), variants=("personal", "global")
    )


def federate_with_runs(
    g: Any, desk_run: Path, clients: list[Any], settings: Any, work: Path
) -> tuple[Path, list[dict[str, Any]]]:
    """The main federated run: every round's deltas through ``trainer federate``'s
    ``run_round``, which writes the next run; returns the last run and per-round figures."""
    from fleet_rounds import Gateways, RoundLog, _reader

    from trainer.federate.collect import DeltaSource
    from trainer.federate.round import run_round
    from trainer.federate.run_out import load_base

    gateways = Gateways(g.manifest, clients, settings)
    keys = {c.machine_id: c.key.public_key() for c in clients}
    run, rounds = desk_run, []
    for r in range(settings.rounds):
        base = load_base(run)
        desk = settings.desk.model_copy(update={"round_id": f"r{r}"})
        log = RoundLog(desk.round_id)
        sent = gateways.round(r, base.weights, log)
        sources = [DeltaSource(s.machine_id, _reader(s.payload)) for s in sent]
        out = work / f"federated-r{r + 1}"
        report = run_round(run, sources, keys, desk, out, base=base)
        rounds.append({
            "round": desk.round_id, "accepted": report.accepted, "refused": report.refused,
            "bytes_received": report.bytes_received, "step_norm": round(report.step_norm, 6),
            "mean_loss_first": round(float(np.mean(list(log.loss_first.values()))), 6),
            "mean_loss_last": round(float(np.mean(list(log.loss_last.values()))), 6),
            "alert_threshold": round(report.alert_threshold, 6),
        })  # fmt: skip
        run = out
    return run, rounds


def int8_check(final_run: Path, machines: list[Any], work: Path) -> dict[str, Any]:
    """Export the final federated run (signed int8 bundle) and score each machine with
    ``edge_agent replay --local-history``, as an engineer checks what a machine will do."""
    from fleet_eval import mean_metrics

    from edge_agent.replay import replay_stream
    from export.bundle import build_bundle
    from export.errors import ExportError
    from export.keys import keygen
    from trainer.evaluate.metrics import point_metrics

    keygen(work / "keys")
    bundle, forced = work / "bundle", False
    t0 = time.perf_counter()
    try:
        build_bundle(final_run, bundle, work / "keys" / "signing.key", variants=())
    except ExportError as exc:
        if "parity gate" not in str(exc):
            raise
        forced = True
        build_bundle(final_run, bundle, work / "keys" / "signing.key", variants=(), force=True)
    export_s = time.perf_counter() - t0
    rows, notes = [], []
    for m in machines:
        whole, history = m.write_csv(work)
        out = work / f"scores-{m.machine_id}.csv"
        summary = replay_stream(
            bundle, whole, out, work / "keys" / "signing.pub", local_history=history
        )
        alert = np.loadtxt(out, delimiter=",", skiprows=1, usecols=4, dtype=np.int64) > 0
        y = m.table.labels["anomaly"].astype(bool)
        metrics = point_metrics(y[m.history_rows :], alert[m.history_rows :])
        rows.append(
            {k: round(float(metrics[k]), 4) for k in ("f1", "precision", "recall", "far", "mar")}
        )
        notes.append(summary.local_threshold)
    manifest = json.loads((bundle / "manifest.json").read_text())
    return {
        "machines": [m.machine_id for m in machines],
        "per_machine": rows,
        "mean": mean_metrics(rows),
        "local_threshold": notes,
        "parity": manifest["parity"],
        "parity_forced": forced,
        "export_seconds": round(export_s, 1),
        "how": "export bundle (int8, signed) of the last federated run, then edge_agent replay "
        "--local-history <the machine's history CSV> over its whole file; rows after the history",
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse(argv)
    import fleet_sweeps
    from fleet_data import desk_history, make_fleet
    from fleet_eval import load_global, mean_metrics
    from fleet_rounds import Client, FleetSettings, fresh_keys

    from edge_agent.learn.local import LocalTrainingConfig
    from trainer.federate.settings import FederateSettings

    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, start: float) -> None:
        timings[name] = round(time.perf_counter() - start, 1)

    machines = make_fleet(
        a.machines, history_hours=a.history_hours, fresh_hours=a.fresh_hours, seed=a.seed
    )
    desk = desk_history(a.desk_hours)
    local_cfg = LocalTrainingConfig(epochs=a.local_epochs, max_windows=a.max_windows, seed=a.seed)
    settings = FleetSettings(
        rounds=a.rounds, local=local_cfg, fraction=a.topk, desk=FederateSettings(round_id="r0")
    )
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        desk_run = fit_run(desk, work / "desk", a.epochs)
        g = load_global(desk_run)
        lap("desk_fit", t)
        windows = machine_windows(g, machines)
        keys = fresh_keys([m.machine_id for m in machines])
        clients = [
            Client(m.machine_id, windows[m.machine_id], keys[m.machine_id]) for m in machines
        ]
        t = time.perf_counter()
        local = local_only(machines, work, a.epochs)
        lap("local_fits", t)
        t = time.perf_counter()
        cent = central(machines, desk, work, a.epochs)
        lap("central_fit", t)
        t = time.perf_counter()
        initial = per_machine(g, g.weights, machines, windows, variants=("personal", "global"))
        final_run, rounds = federate_with_runs(g, desk_run, clients, settings, work)
        final = load_global(final_run)
        fed = per_machine(
            g, final.weights, machines, windows, variants=("personal", "unbounded", "global")
        )
        lap("federated", t)
        t = time.perf_counter()
        n_int8 = a.int8_machines or len(machines)
        int8 = int8_check(final_run, machines[:n_int8], work)
        lap("int8", t)
        t = time.perf_counter()
        sweeps = fleet_sweeps.run_all(
            a, g, machines, windows, clients, settings, final.weights, work, per_machine
        )
        lap("sweeps", t)
    f_local = mean_metrics(local)["f1"]
    f_fed = fed["personal"]["mean"]["f1"]
    f_central = cent["personal"]["mean"]["f1"]
    report: dict[str, Any] = {
        "benchmark": "fleet learning on a simulated non-IID compressor fleet (issue 11)",
        "machine": machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "local_training": local_cfg.model_dump(),
        "desk": settings.desk.model_dump(),
        "fleet": [m.describe() for m in machines],
        "parameters": g.weights.size,
        "scored_rows": "fresh rows only (after each machine's history); point-wise F1/FAR",
        "threshold_note": "personal: edge_agent.learn.personalise (q95 of the machine's errors "
        "on all its history windows / the desk's q95, clamped to the manifest's 0.8-1.5); "
        "unbounded: the same ratio unclamped; global: the run's own threshold",
        "local_only": {"per_machine": local, "mean": mean_metrics(local)},
        "federated": fed,
        "federated_rounds": rounds,
        "initial_global": initial,
        "central": cent,
        "targets": {
            "federated_minus_local_f1": round(f_fed - f_local, 4),
            "gain_target": TARGET_GAIN_OVER_LOCAL,
            "gain_met": f_fed - f_local >= TARGET_GAIN_OVER_LOCAL,
            "central_minus_federated_f1": round(f_central - f_fed, 4),
            "gap_target": TARGET_GAP_TO_CENTRAL,
            "gap_met": f_central - f_fed <= TARGET_GAP_TO_CENTRAL,
        },
        "int8": int8,
        **sweeps,
        "timings_s": timings,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    print(
        json.dumps(
            {
                "local_only": f_local,
                "federated": f_fed,
                "central": f_central,
                "int8": int8["mean"]["f1"],
                "wall_seconds": report["wall_seconds"],
            }
        )
    )
    return report


if __name__ == "__main__":
    main()
