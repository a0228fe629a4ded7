"""Reduced benchmark runs: the same scripts as the recorded results, on a slice of the data.

They prove the benchmarks run end to end from a fresh clone and write well-formed JSON; the
figures themselves are recorded in bench/results/ by the full runs, never asserted here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from bench_loader import SKAB, load_bench


@pytest.mark.skipif(not SKAB.is_dir(), reason="../shared/datasets/skab not present")
def test_skab_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "skab.json"
    report = load_bench("skab").main(["--limit", "1", "--jobs", "1", "--out", str(out)])
    assert report["files"] == 2  # valve1/0.csv and valve2/0.csv
    saved = json.loads(out.read_text())
    for side in ("int8", "float"):
        assert 0.0 <= saved[side]["f1"] <= 1.0
        assert 0.0 <= saved[side]["far"] <= 1.0
        assert "nab_standard" in saved[side]
    assert all(f["parity"]["windows"] > 0 for f in saved["per_file"])
    # The NAB tally explains the pooled score: rebuilt from the counts it gives the same figure.
    for side in ("int8", "float"):
        c = saved["nab_counts"][side]
        assert 0 <= c["detected"] <= c["windows"]
        assert c["tp_credit"] <= c["detected"]
        raw = c["tp_credit"] - 0.11 * c["false_positives"] - (c["windows"] - c["detected"])
        perfect = c["windows"] * (2 / (1 + math.exp(-5)) - 1)  # caught at each window's start
        rebuilt = 100 * (raw + c["windows"]) / (perfect + c["windows"])
        assert rebuilt == pytest.approx(saved[side]["nab_standard"], abs=0.01)
    assert 0.0 <= saved["window_recall_kept_by_screen"] <= 1.0
    assert saved["stage2_alone_anomalous_windows_alerted"] > 0
    rows = saved["error_rows"]
    assert sum(f["error_rows_int8"]["fn_missed"] for f in saved["per_file"]) == rows["fn_missed"]
    windows = saved["nab_counts"]["int8"]["windows"]
    assert sum(f["nab_int8"]["windows"] for f in saved["per_file"]) == windows


def test_skab_error_rows_places_every_wrong_row() -> None:
    skab = load_bench("skab")
    ts = np.arange(400.0)
    y = np.zeros(400, bool)
    y[100:150] = True  # caught late, with a gap, and left early
    y[300:320] = True  # never caught
    pred = np.zeros(400, bool)
    pred[110:130] = True
    pred[133:145] = True
    pred[150:170] = True  # after the first anomaly, within a minute
    pred[30:35] = True  # more than a minute before the first anomaly starts
    pred[250:255] = True  # within a minute before the second
    out = skab.error_rows(y, pred, ts)
    assert out == {
        "fn_onset": 10,
        "fn_ending": 5,
        "fn_gaps": 3,
        "fn_missed": 20,
        "fp_before": 5,
        "fp_after": 20,
        "fp_elsewhere": 5,
    }
    assert sum(v for k, v in out.items() if k.startswith("fn")) == int((y & ~pred).sum())
    assert sum(v for k, v in out.items() if k.startswith("fp")) == int((pred & ~y).sum())


def test_simulator_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    report = load_bench("simulator").main(
        ["--history", "8000", "--live", "6000", "--epochs", "8", "--out", str(out)]
    )
    saved = json.loads(out.read_text())
    assert set(saved["per_kind"]) == set(report["per_kind"])
    assert 0.0 < saved["windows_reaching_stage2"] <= 1.0
    assert saved["per_kind"]["spike"]["cascade"]["episodes"] >= 1
    for kind in saved["per_kind"].values():
        rec = kind["cascade"]
        if rec["episodes"]:
            assert 0 <= rec["episodes_caught"] <= rec["episodes"]
            assert {"delay_median_samples", "delay_p90_s"} <= set(rec)


def test_pipeline_throughput_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    report = load_bench("pipeline_throughput").main(
        ["--history", "8000", "--live", "3000", "--epochs", "2", "--stream-windows", "300",
         "--ref-stream-windows", "40", "--repeats", "1", "--no-cold-start", "--aot-rounds", "1",
         "--out", str(out)]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    for side in ("ours", "reference"):
        batch = saved[side]["batch"]
        assert batch["rows"] == 3000
        assert batch["rows_per_s"] > 0
        assert batch["channel_samples_per_s"] == pytest.approx(5 * batch["rows_per_s"], rel=1e-3)
        latency = saved[side]["streaming"]["latency"]
        assert set(latency) == {"stage1", "stage2", "overall"}
        assert {"p50_ms", "p99_ms", "max_ms"} <= set(latency["overall"])
    assert saved["ours"]["streaming"]["windows"] == 300
    aot = saved["aot"]  # the same loops on the JIT and on both compiled builds, in children
    assert {"jit", "aot_host", "aot_generic"} <= set(aot)
    assert all(r["streaming"]["windows"] == 300 for r in aot["full_runs"]["aot_host"])
    assert set(aot["ratio_to_jit"]) == {"aot_host", "aot_generic"}
    assert saved["reference"]["streaming"]["windows"] == 40
    assert saved["machine"]
    assert {"batch", "streaming_p50", "streaming_p99"} <= set(saved["speedup"])


def test_quality_cost_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    report = load_bench("quality_cost").main(
        ["--samples", "300", "--rows", "30000", "--repeats", "1", "--out", str(out)]
    )
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    for side in ("configured_only", "with_learned_limits"):
        assert saved["check_per_sample"][side]["median_us"] > 0
    assert saved["learned_checks_offline"]["rows"] == 30000
    assert saved["learned_checks_offline"]["channel_samples_per_s"] > 0


def test_alert_deadband_replay_holds_and_counts_openings() -> None:
    bench = load_bench("alert_deadband")
    err = np.array([1.2, 1.1, 1.3, 0.7, 0.7, 0.4, 0.4, 0.4, 0.4, 1.5, 1.5, 1.5, 0.1])
    y = np.zeros(14, bool)
    y[:6] = True
    row_window = np.append(np.arange(13), -1)  # the last row has no window yet
    sf = np.zeros(14, bool)
    sf[13] = True  # a sensor fault is flagged whatever the alert says
    s = bench.Scored("x", y, row_window, err, 1.0, sf)
    held, opens = bench.replay(s, bench.Hysteresis(0.6, 3))
    assert held.astype(int).tolist() == [0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1]
    assert opens == 2
    plain, _ = bench.replay(s, bench.Hysteresis(1.0, 3))
    assert plain.astype(int).tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1]
    # Opening on the first window over a threshold lowered below 0.4 flags every row.
    eager, opens = bench.replay(s, bench.Hysteresis(1.0, 3, open_after=1, threshold_factor=0.3))
    assert eager.all()
    assert opens == 1
    assert bench.pooled([s], bench.Hysteresis(0.6, 3)) == {
        "f1": round(8 / 14, 4), "far": 0.5, "openings": 2
    }  # fmt: skip


def test_alert_deadband_pools_nab_scores_where_change_points_are_known() -> None:
    bench = load_bench("alert_deadband")
    # One anomaly over rows 10..19 (change points at both ends), one second apart.
    y = np.zeros(40, bool)
    y[10:20] = True
    cp = np.zeros(40, bool)
    cp[[10, 20]] = True
    ts = np.arange(40, dtype=np.float64)
    err = np.where(y, 5.0, 0.0)
    s = bench.Scored("x", y, np.arange(40), err, 1.0, np.zeros(40, bool), (ts, cp))
    # Opening at once and closing at once: an edge at each change point, nothing else.
    r = bench.pooled([s], bench.Hysteresis(1.0, 1, open_after=1))
    assert r["f1"] == 1.0
    assert r["far"] == 0.0
    assert r["nab_standard"] == r["nab_low_fp"] == r["nab_low_fn"] == 100.0
    # Never opening misses both windows: the null detector's 0 under every profile.
    deaf = bench.pooled([s], bench.Hysteresis(1.0, 1, threshold_factor=10.0))
    assert deaf["nab_standard"] == deaf["nab_low_fn"] == 0.0
    # Without change points (the simulator) no NAB score is claimed.
    plain = bench.Scored("x", y, np.arange(40), err, 1.0, np.zeros(40, bool))
    assert "nab_standard" not in bench.pooled([plain], bench.Hysteresis(1.0, 1))


@pytest.mark.skipif(not SKAB.is_dir(), reason="../shared/datasets/skab not present")
def test_alert_deadband_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "deadband.json"
    load_bench("alert_deadband").main(
        ["--skab-limit", "1", "--jobs", "1", "--sim-history", "6000", "--sim-live", "3000",
         "--sim-epochs", "3", "--out", str(out)]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    first_of_each_group = [f for f in load_bench("skab").skab_files() if int(f.stem) < 1]
    assert saved["skab_files"] == len(first_of_each_group) > 0
    assert len(saved["grid"]) == 30
    grid = {(r["hold_ratio"], r["close_after"]): r for r in saved["grid"]}
    for name in ("skab", "sim_21_22", "sim_31_32"):
        # A lower hold ratio or a later close only ever keeps an alert open longer.
        assert grid[0.5, 15][name]["far"] >= grid[0.5, 3][name]["far"]
        assert grid[0.5, 3][name]["far"] >= grid[1.0, 3][name]["far"]
        assert grid[0.5, 15][name]["openings"] <= grid[1.0, 3][name]["openings"]
    assert {"nab_standard", "nab_low_fp", "nab_low_fn"} <= set(grid[1.0, 3]["skab"])
    assert saved["packages"]["numpy"]  # results name the model stack they were measured on
    sens = {(r["open_after"], r["threshold_factor"]): r for r in saved["sensitivity"]}
    assert len(sens) == 21
    for name in ("skab", "sim_21_22", "sim_31_32"):
        # A lower threshold or an earlier opening only ever flags more rows.
        assert sens[1, 0.7][name]["far"] >= sens[3, 1.0][name]["far"] >= sens[3, 1.5][name]["far"]


def test_screen_headroom_sweep_sends_fewer_windows_as_the_factor_grows() -> None:
    bench = load_bench("screen_headroom")
    # Four windows: one just outside the envelope, one far outside, one whose residual is 2.5x
    # its limit, one the forest sends; stage 2 alerts on the far one (anomalous) only.
    parts = bench.ScreenParts(
        "x",
        envelope=np.array([0.2, 5.0, -1.0, -1.0]),
        residual=np.array([0.5, 0.5, 2.5, 0.5]),
        forest=np.array([False, False, False, True]),
        alerts=np.array([False, True, False, False]),
        anomalous=np.array([False, True, False, False]),
        margin=2.25,
        headroom=2.25,
    )
    grid = {r["factor"]: r for r in bench.sweep([parts])}
    assert grid[1.0]["stage2_fraction"] == 1.0
    assert grid[2.25]["stage2_fraction"] == 0.75  # the first window now lies inside
    assert grid[3.0]["stage2_fraction"] == 0.5  # and the residual one under the raised limit
    assert grid[8.0]["stage2_fraction"] == 0.25  # the forest's window only
    assert grid[5.0]["recall_kept"] == 1.0
    assert grid[8.0]["recall_kept"] == 0.0
    # Factors 3 to 5 send the same half; the smallest of them is reported.
    lowest = bench.summary([parts])["lowest_fraction_keeping_98pct"]
    assert (lowest["factor"], lowest["stage2_fraction"]) == (3.0, 0.5)
    # Each case at its own fit headroom: this one's 2.25, another's 8 pooled beside it.
    at_own = bench.summary([parts])["at_fit_headroom"]
    assert at_own == {"stage2_fraction": 0.75, "recall_kept": 1.0}
    wide = dataclasses.replace(parts, headroom=8.0)
    assert bench.shares([parts, wide], None) == {"stage2_fraction": 0.5, "recall_kept": 0.5}


@pytest.mark.skipif(not SKAB.is_dir(), reason="../shared/datasets/skab not present")
def test_screen_headroom_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "headroom.json"
    load_bench("screen_headroom").main(
        ["--skab-limit", "1", "--jobs", "1", "--sim-history", "6000", "--sim-live", "3000",
         "--sim-epochs", "3", "--sim-short", "1000", "--out", str(out)]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    short = saved["simulator_by_history"]["1000"]
    summaries = {name: saved[name] for name in ("skab", "sim_21_22", "sim_31_32")} | short
    assert set(short) == {"sim_21_22_h1000", "sim_31_32_h1000"}
    for summary in summaries.values():
        grid = summary["grid"]
        fractions = [r["stage2_fraction"] for r in grid]
        assert fractions == sorted(fractions, reverse=True)  # wider limits send fewer
        assert grid[0]["factor"] == 1.0
        assert all(1.0 >= r["recall_kept"] >= 0.0 for r in grid)
        assert 1.0 <= summary["fit_headroom"][0] <= summary["threshold_margin"][0]
