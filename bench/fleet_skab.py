"""SKAB as a fleet: each file one machine, federated learning from the anomaly-free history.

The published outlier protocol of ``bench/skab.py`` (rows [0, 400) of each file are history,
rows [400, end) are scored, point-wise TP/FP/FN/TN pooled over all files, NAB too), but instead
of one model per file: the desk's initial global model is ``trainer fit`` on
``anomaly-free.csv``; every file's first 400 rows are one gateway's local history (its windows,
normalized with the global model's channel statistics, as the device does); ``--rounds``
federated rounds (``bench/fleet_rounds.py``: the gateway's round with top-k ``--topk`` and
error feedback, ``trainer federate`` writing every round's run, as ``fleet_learning.py``);
then each file scored with its own personalised threshold (the gateway's rule on its 400-row
windows). Reported: the initial global model and the federated one (float, personalised,
unbounded and global thresholds), the federated one as a signed int8 bundle through
``edge_agent replay --local-history``, against the per-file figure of ``bench/results/
skab.json`` (one model fitted on each file's own 400 rows: 0.754 F1 int8).

    python bench/fleet_skab.py                  # all 34 files -> bench/results/fleet_skab.json
    python bench/fleet_skab.py --limit 1 ...    # CI: two files
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
from skab import SKAB, TRAIN_ROWS, pooled, skab_files, unlabelled  # noqa: E402

DESK_FILE = SKAB / "anomaly-free" / "anomaly-free.csv"
PER_FILE_RESULT = ROOT / "bench" / "results" / "skab.json"
LABELS = ["anomaly", "changepoint"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, help="only files numbered below N in each group")
    ap.add_argument("--epochs", type=int, help="desk fit epochs (default: built-in)")
    ap.add_argument("--rounds", type=int, default=10, help="federated rounds R")
    ap.add_argument("--local-epochs", type=int, default=2, help="local epochs E per round")
    ap.add_argument("--topk", type=float, default=0.01, help="top-k fraction of the deltas")
    ap.add_argument("--seed", type=int, default=0, help="local shuffles")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fleet_skab.json")
    return ap.parse_args(argv)


def machine_id(path: Path) -> str:
    return f"skab-{path.parent.name}-{path.stem}"


def scored(
    g: Any,
    weights: Any,
    files: list[Path],
    tables: list[Any],
    windows: dict[str, np.ndarray],
    variant: str,
    channels: dict[str, list[Any]] | None = None,
) -> dict[str, Any]:
    """Pooled protocol metrics of ``weights`` with each file's ``variant`` threshold;
    ``channels``: each file's own channel statistics in place of the desk's (the what-if)."""
    from fleet_eval import alerts, global_cascade, local_threshold, with_threshold

    from trainer.evaluate.metrics import point_metrics

    shared, cascade = global_cascade(g, weights)
    results, per_file = [], []
    for path, table in zip(files, tables, strict=True):
        manifest = shared
        if channels is not None:
            manifest = shared.model_copy(update={"channels": channels[machine_id(path)]})
        man, cas = manifest, cascade
        if variant != "global":
            thr, _ = local_threshold(
                manifest, cascade, windows[machine_id(path)], bounded=variant == "personal"
            )
            man, cas = with_threshold(manifest, cascade, thr)
        results.append(_row(table, alerts(table, man, cas, TRAIN_ROWS)))
        per_file.append(round(float(point_metrics(results[-1]["y"], results[-1]["p"])["f1"]), 4))
    return {"pooled": pooled(results, "p"), "per_file_f1": per_file}


def local_channels(g: Any, table: Any) -> list[Any]:
    """The desk's channel specs with this file's own mean and scale over its 400 rows, by the
    trainer's rule (``trainer.fit.prepare_history``)."""
    from trainer.fit import prepare_history

    prep = prepare_history(unlabelled(table.slice(0, TRAIN_ROWS)), g.config)
    return [
        c.model_copy(update={"mean": float(m), "scale": float(sc)})
        for c, m, sc in zip(g.manifest.channels, prep.mean, prep.scale, strict=True)
    ]


def _row(table: Any, predicted: np.ndarray) -> dict[str, Any]:
    return {
        "y": table.labels["anomaly"][TRAIN_ROWS:].astype(bool),
        "cp": table.labels["changepoint"][TRAIN_ROWS:].astype(bool),
        "ts": table.timestamps[TRAIN_ROWS:],
        "p": predicted,
    }


def int8_replay(
    final_run: Path, files: list[Path], tables: list[Any], work: Path
) -> dict[str, Any]:
    """The final federated run as a signed int8 bundle, each file replayed with its first 400
    rows as the local history (``edge_agent replay --local-history``)."""
    from edge_agent.replay import replay_stream
    from export.bundle import build_bundle
    from export.errors import ExportError
    from export.keys import keygen

    keygen(work / "keys")
    bundle, forced = work / "bundle", False
    try:
        build_bundle(final_run, bundle, work / "keys" / "signing.key", variants=())
    except ExportError as exc:
        if "parity gate" not in str(exc):
            raise
        forced = True
        build_bundle(final_run, bundle, work / "keys" / "signing.key", variants=(), force=True)
    results, sources = [], {"local": 0, "manifest": 0}
    for path, table in zip(files, tables, strict=True):
        history = work / f"{machine_id(path)}-history.csv"
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        history.write_text("".join(lines[: TRAIN_ROWS + 1]), encoding="utf-8")
        out = work / f"{machine_id(path)}-scores.csv"
        summary = replay_stream(
            bundle, path, out, work / "keys" / "signing.pub", local_history=history
        )
        sources["local" if "(local," in (summary.local_threshold or "") else "manifest"] += 1
        alert = np.loadtxt(out, delimiter=",", skiprows=1, usecols=4, dtype=np.int64) > 0
        results.append(_row(table, alert[TRAIN_ROWS:]))
    parity = json.loads((bundle / "manifest.json").read_text())["parity"]
    return {
        "pooled": pooled(results, "p"),
        "threshold_sources": sources,
        "parity": parity,
        "parity_forced": forced,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse(argv)
    from fleet_eval import load_global
    from fleet_learning import federate_with_runs
    from fleet_rounds import Client, FleetSettings, fresh_keys, run_federation

    from edge_agent.data.table import read_table
    from edge_agent.learn.history import history_windows
    from edge_agent.learn.local import LocalTrainingConfig
    from trainer.config import load_config
    from trainer.federate.settings import FederateSettings
    from trainer.fit import fit

    t0 = time.perf_counter()
    files = [f for f in skab_files() if a.limit is None or int(f.stem) < a.limit]
    tables = [read_table(f, label_cols=LABELS) for f in files]
    local_cfg = LocalTrainingConfig(epochs=a.local_epochs, seed=a.seed)
    settings = FleetSettings(
        rounds=a.rounds, local=local_cfg, fraction=a.topk, desk=FederateSettings(round_id="r0")
    )
    with tempfile.TemporaryDirectory(prefix="fleet-skab-") as tmp:
        work = Path(tmp)
        cfg = load_config(None)
        if a.epochs:
            cfg.autoencoder.epochs = a.epochs
        fit(read_table(DESK_FILE), work / "desk", cfg, seed=0)
        g = load_global(work / "desk")
        windows = {
            machine_id(f): history_windows(unlabelled(t.slice(0, TRAIN_ROWS)), g.manifest, hop=1)[0]
            for f, t in zip(files, tables, strict=True)
        }
        keys = fresh_keys(list(windows))
        clients = [Client(m, w, keys[m]) for m, w in windows.items()]
        t_fed = time.perf_counter()
        final_run, rounds = federate_with_runs(g, work / "desk", clients, settings, work)
        fed_s = time.perf_counter() - t_fed
        final = load_global(final_run)
        # What-if (not what the gateway does): each gateway normalizes with its own history's
        # channel statistics, the autoencoder stays shared.
        own = {machine_id(f): local_channels(g, t) for f, t in zip(files, tables, strict=True)}
        own_windows = {
            m: history_windows(
                unlabelled(t.slice(0, TRAIN_ROWS)),
                g.manifest.model_copy(update={"channels": own[m]}),
                hop=1,
            )[0]
            for m, t in zip(own, tables, strict=True)
        }
        own_clients = [Client(m, w, keys[m]) for m, w in own_windows.items()]
        own_fed = run_federation(g.base, g.manifest, own_clients, settings)
        report: dict[str, Any] = {
            "initial_global": {
                v: scored(g, g.weights, files, tables, windows, v) for v in ("personal", "global")
            },
            "federated": {
                v: scored(g, final.weights, files, tables, windows, v)
                for v in ("personal", "unbounded", "global")
            },
            "federated_int8": int8_replay(final_run, files, tables, work),
            "what_if_local_normalization": {
                "note": "not the gateway's behaviour: each file's windows normalized with its "
                "own rows [0,400) statistics (trainer's rule) for training, calibration and "
                "scoring; the autoencoder, forest and rounds as above (in-memory desk)",
                "initial_personal": scored(
                    g, g.weights, files, tables, own_windows, "personal", own
                ),
                "federated_personal": scored(
                    g, own_fed.weights[-1], files, tables, own_windows, "personal", own
                ),
            },
            "federated_rounds": rounds,
            "federation_seconds": round(fed_s, 1),
        }
    per_file = json.loads(PER_FILE_RESULT.read_text()) if PER_FILE_RESULT.is_file() else {}
    report = {
        "benchmark": "SKAB as a fleet: desk model on anomaly-free.csv, each file's rows [0,400) "
        "one gateway's history, federated rounds, rows [400,end) scored and pooled",
        "machine": machine(),
        "files": len(files),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "local_training": local_cfg.model_dump(),
        "desk": settings.desk.model_dump(),
        "parameters": g.weights.size,
        "per_file_models_reference": {
            "source": "bench/results/skab.json (one trainer fit per file on its rows [0,400))",
            "int8": per_file.get("int8"),
            "float": per_file.get("float"),
        },
        **report,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({
        "files": len(files),
        "initial_personal_f1": report["initial_global"]["personal"]["pooled"]["f1"],
        "federated_personal_f1": report["federated"]["personal"]["pooled"]["f1"],
        "federated_int8_f1": report["federated_int8"]["pooled"]["f1"],
        "what_if_own_normalization_f1":
            report["what_if_local_normalization"]["federated_personal"]["pooled"]["f1"],
        "per_file_models_int8_f1": (per_file.get("int8") or {}).get("f1"),
        "wall_seconds": report["wall_seconds"],
    }))  # fmt: skip
    return report


if __name__ == "__main__":
    main()
