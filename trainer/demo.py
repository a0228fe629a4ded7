"""``trainer demo``: the whole desk-to-device path on the plant simulator, in one command.

simulate a compressor with labelled faults → ``trainer fit`` on its history → ``export keygen``
and ``export bundle`` (int8, signed) → ``edge_agent replay`` on a fresh stretch of the same
machine → a table of what was detected against what was injected, per fault kind. The table is
what the bundle the live demo (``scripts/demo``) then runs does on data it has never seen.

Each step calls the library function its command line calls (``trainer.fit.fit``,
``export.bundle.build_bundle``, ``edge_agent.replay.replay``), not the other CLIs: ``trainer
demo`` is itself a ``trainer`` subcommand, and the demo must not import the CLI that runs it.

The demo model is trained for speed (about a minute on 2 CPU cores, see ``DEMO_AUTOENCODER``)
on one day of history; the replay table states what that costs in recall.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edge_agent.simulator import FAULT_KINDS, simulate_plant

# One day at 1 s: every shift, lunch break and idle stop of the daily pattern once, starting
# at the hour the live simulator starts serving (the plant's default start time, midnight).
# Measured on 2 cores (27.6 h of unseen data: three 20000-row stretches, six hours of the
# served plant, eight demo schedules): the former two days at batch 64 took 155 s to fit; one
# day with DEMO_AUTOENCODER takes 50 s and catches as many level shifts (32 vs 33 of 36) and
# contextual faults (36 of 36 both), every demo-opening level shift within 5 s, with as many
# false-alarm episodes (52 vs 56).
HISTORY_ROWS = 86_400
LIVE_ROWS = 20_000  # a fresh 5.6 h stretch the gateway has never seen
HISTORY_SEED = 11
LIVE_SEED = 12
# The demo's autoencoder settings, on top of the built-in TrainConfig. Four times the default
# batch with the learning rate scaled up with it: 2 CPU cores get through about twice as many
# windows per second at batch 256 as at 64, so the default 80 epochs over the default 60000
# training windows take 40 s instead of 150 s and end within 10 % of the same loss. (Fewer
# epochs or windows, tried too, halve the level shifts caught on oil temperature.)
DEMO_AUTOENCODER = {"epochs": 80, "batch_size": 256, "learning_rate": 0.003}


def run_demo(
    out: Path,
    *,
    epochs: int | None = None,
    history_rows: int = HISTORY_ROWS,
    live_rows: int = LIVE_ROWS,
) -> dict[str, object]:
    """Run every step into ``out``; returns (and writes to ``summary.json``) the replay table.

    ``epochs`` overrides the demo's autoencoder epochs; ``history_rows``/``live_rows`` make a
    smaller demo (the tests' quick run).
    """
    from edge_agent.data.table import read_table
    from edge_agent.detect.cascade import STAGE_AUTOENCODER
    from edge_agent.replay import replay
    from export.bundle import build_bundle
    from export.keys import PRIVATE_NAME, PUBLIC_NAME, keygen
    from trainer.config import load_config
    from trainer.fit import fit

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    history, live = out / "history.csv", out / "live.csv"
    simulate_plant(rows=history_rows, seed=HISTORY_SEED).write_csv(history)
    plant = simulate_plant(rows=live_rows, seed=LIVE_SEED)
    plant.write_csv(live)
    print(
        f"1/4 simulated {history_rows} rows of history and {live_rows} live rows "
        f"in {_since(t)} -> {out}"
    )

    t = time.perf_counter()
    cfg = out / "train.toml"
    cfg.write_text(demo_train_toml(epochs), encoding="utf-8")
    run = out / "run"
    record = fit(read_table(history, label_cols=["anomaly"]), run, load_config(cfg), overwrite=True)
    v = record.validation
    print(f"2/4 trained forest + autoencoder in {_since(t)} -> {run}")
    print(
        f"    held out {v.windows} normal windows: false-alarm rate {v.false_alarm_rate:.2%}; "
        f"{v.positives} anomalous: recall {v.cascade_recall:.1%} behind the screen"
    )

    t = time.perf_counter()
    keys = out / "keys"
    if not (keys / PRIVATE_NAME).exists():
        keygen(keys)
    bundle = out / "bundle"
    m = build_bundle(run, bundle, keys / PRIVATE_NAME, variants=(), overwrite=True)
    print(f"3/4 signed int8 bundle in {_since(t)} -> {bundle}")
    print(
        f"    {m.model_version}: F1 float {m.parity.f1_float:.3f} int8 {m.parity.f1_int8:.3f} "
        f"on {m.parity.windows} windows"
    )

    t = time.perf_counter()
    scores = out / "scores.csv"
    res = replay(bundle, live, scores, keys / PUBLIC_NAME)
    print(f"4/4 replayed the live rows through the device pipeline in {_since(t)} -> {scores}")
    print(
        f"    {res.stage.size} rows: {int((res.stage == STAGE_AUTOENCODER).sum())} reached "
        f"stage 2, {int(res.alert.sum())} in alert, {int(res.sensor_fault.sum())} with a "
        "sensor fault (stuck, noisy, jump or spike)\n"
    )
    summary = summarize(plant.labels, plant.fault_kind, _flagged(scores), period_s=plant.period_s)
    _print(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\ndemo model ready in {_since(started)}")
    return summary


def demo_train_toml(epochs: int | None = None) -> str:
    """The demo's training settings as ``trainer fit --config`` reads them."""
    settings = {**DEMO_AUTOENCODER, **({"epochs": epochs} if epochs is not None else {})}
    lines = ["# trainer demo: settings for a model trained in about a minute", "[autoencoder]"]
    lines += [f"{key} = {value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def _since(t: float) -> str:
    return f"{time.perf_counter() - t:.1f} s"


def _flagged(scores: Path) -> np.ndarray:
    """Rows the operator is told about, from replay's output: in alert or with a sensor fault."""
    data = np.genfromtxt(scores, delimiter=",", names=True, dtype=None, encoding="utf-8")
    return np.asarray(data["alert"], dtype=bool) | np.asarray(data["sensor_fault"], dtype=bool)


def summarize(
    labels: np.ndarray, kinds: np.ndarray, alert: np.ndarray, *, period_s: float = 1.0
) -> dict[str, object]:
    """Per fault kind: episodes injected and caught, point recall and mean delay to the first
    alert; overall point precision, recall, F1 and false alarms (rate and episodes)."""
    from trainer.evaluate.metrics import point_metrics, segments

    y = labels.astype(bool)
    delays: dict[str, list[int]] = {}
    injected: dict[str, int] = {}
    for a, b in segments(y):
        kind = FAULT_KINDS[int(kinds[a]) - 1]
        injected[kind] = injected.get(kind, 0) + 1
        hits = np.flatnonzero(alert[a:b])
        delays.setdefault(kind, [])
        if hits.size:
            delays[kind].append(int(hits[0]))
    per_kind: dict[str, dict[str, float | int]] = {}
    for kind, n in injected.items():
        rows = kinds == FAULT_KINDS.index(kind) + 1
        per_kind[kind] = {
            "injected": n,
            "detected": len(delays[kind]),
            "point_recall": float(alert[rows].mean()),
            "mean_delay_s": float(np.mean(delays[kind])) * period_s
            if delays[kind]
            else float("nan"),
        }
    # False-alarm episodes: alert runs that touch no injected fault.
    false_eps = sum(not y[s:e].any() for s, e in segments(alert.astype(bool)))
    m = point_metrics(y, alert)
    return {
        "per_kind": per_kind,
        "false_alarm_episodes": int(false_eps),
        "hours": float(y.size * period_s / 3600.0),
        "point_precision": m["precision"],
        "point_recall": m["recall"],
        "point_f1": m["f1"],
        "false_alarm_rate": m["far"],
    }


def _print(summary: dict[str, object]) -> None:
    print(
        f"{'fault kind':<14}{'injected':>9}{'caught':>8}{'point recall':>14}{'mean delay (s)':>16}"
    )
    per_kind = summary["per_kind"]
    assert isinstance(per_kind, dict)
    for kind in FAULT_KINDS:
        k = per_kind.get(kind)
        if k:
            print(
                f"{kind:<14}{k['injected']:>9}{k['detected']:>8}{k['point_recall']:>14.2f}"
                f"{k['mean_delay_s']:>16.1f}"
            )
    print(
        f"\nevery live row: precision {summary['point_precision']:.3f}  recall "
        f"{summary['point_recall']:.3f}  F1 {summary['point_f1']:.3f}  false-alarm rate "
        f"{summary['false_alarm_rate']:.2%}\nfalse-alarm episodes (alerts touching no fault): "
        f"{summary['false_alarm_episodes']} in {summary['hours']:.1f} h"
    )
