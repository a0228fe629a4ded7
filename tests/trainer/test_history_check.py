"""``trainer.history_check`` on real histories, and ``trainer fit``'s warnings, JSON and
``--strict-history``.

The histories are the ones the check was made for: SKAB's rig warming up (the first 20 % of
``anomaly-free.csv``, where a model fitted there alerts on 90 % of the later normal rows) and
days of the plant simulator's normal operation, which must pass quietly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.data.table import SensorTable, read_table
from edge_agent.simulator import simulate_plant
from trainer.config import TrainConfig
from trainer.history_check import CHECK_FILE, HistoryCheck, check_history, configured_ranges
from trainer.history_findings import TREND_RATIO, ChannelSummary

ROOT = Path(__file__).resolve().parents[2]
SKAB_FREE = ROOT.parent / "shared" / "datasets" / "skab" / "data" / "anomaly-free"
PUMP_CONFIG = ROOT / "firmware_configs" / "pump-skid-03.toml"
COMPRESSOR_CONFIG = ROOT / "firmware_configs" / "compressor-07.toml"
needs_skab = pytest.mark.skipif(
    not SKAB_FREE.is_dir(), reason="../shared/datasets/skab not present beside the clone"
)
DAY_ROWS = 86_400
WARMUP_SHARE = 0.2


def skab_warmup() -> SensorTable:
    table = read_table(SKAB_FREE / "anomaly-free.csv")
    return table.slice(0, int(WARMUP_SHARE * table.rows))


def simulated(rows: int, seed: int, anomaly_fraction: float = 0.0) -> SensorTable:
    plant = simulate_plant(rows=rows, seed=seed, anomaly_fraction=anomaly_fraction)
    return SensorTable(
        path=f"simulator seed {seed}",
        timestamps=plant.timestamps.copy(),
        values=plant.values.copy(),
        channels=plant.channels,
        labels={"anomaly": plant.labels.copy()},
    )


def rules(check: HistoryCheck, channel: str | None = None) -> set[str]:
    return {f.rule for f in check.findings if channel is None or f.channel == channel}


@needs_skab
def test_skab_warm_up_names_the_thermocouple_first() -> None:
    check = check_history(skab_warmup(), TrainConfig())
    trends = [f for f in check.findings if f.kind == "trend"]
    assert trends[0].channel == "Thermocouple"  # the strongest trend leads
    assert trends[0].value > 10 * trends[0].limit  # creeping 0.9 °C, spread 0.02 around it
    assert "Thermocouple drifts +0.879 over the 34 min history" in trends[0].message
    # The rig's other channels wander but do not creep: current and voltage stay quiet.
    assert not {"Current", "Voltage", "Pressure"} & {f.channel for f in trends}
    assert {"time_span", "threshold_tail", "autoencoder_windows"} <= rules(check)
    assert "jump_limits" not in rules(check)  # 1,881 rows


@pytest.mark.parametrize("seed", [0, 1, 31])
def test_a_day_of_the_simulated_plant_passes(seed: int) -> None:
    # Oil temperature swings by 8 °C over the day and ends it degrees away from where it
    # began: a cycle, not a drift. Faults are labelled, so they are left out as fit does.
    check = check_history(simulated(DAY_ROWS, seed, anomaly_fraction=0.04), TrainConfig())
    assert check.findings == ()
    assert max(s.trend.ratio for s in check.channels if s.trend) < TREND_RATIO


def test_a_short_history_gets_the_short_findings() -> None:
    check = check_history(simulated(1_500, seed=4), TrainConfig())
    assert rules(check) >= {"autoencoder_windows", "threshold_tail", "time_span"}
    span = next(f for f in check.findings if f.rule == "time_span")
    assert span.value == pytest.approx(1_500.0)
    assert "the history covers 25 min, less than a day" in span.message
    assert "jump_limits" not in rules(check)
    short = check_history(simulated(600, seed=4), TrainConfig())
    jump = next(f for f in short.findings if f.rule == "jump_limits")
    assert (jump.value, jump.limit, jump.unit) == (600, 1_000, "rows")
    assert "will not report spikes as sensor faults" in jump.message
    tail = next(f for f in check.findings if f.rule == "threshold_tail")
    assert "give it 8,000 rows or more" in tail.message  # 10 x 16 / (0.2 x 0.1)
    # A day of 1 s samples is enough for every rule at the default settings.
    assert rules(check_history(simulated(DAY_ROWS, seed=4), TrainConfig())) == set()


def test_too_few_rows_for_the_forest() -> None:
    check = check_history(simulated(300, seed=5), TrainConfig())
    forest = next(f for f in check.findings if f.rule == "forest_windows")
    assert forest.value < forest.limit == 256
    assert "give it 335 rows or more" in forest.message  # 256 / 0.8 + 15


def test_a_stuck_channel_is_narrow() -> None:
    table = simulated(DAY_ROWS, seed=6)
    table.values[:, 2] = 71.5  # oil temperature transmitter frozen
    table.values[::50, 2] += 0.1  # with the odd blip: still 98 % one value
    check = check_history(table, TrainConfig())
    stuck = [f for f in check.findings if f.rule == "stuck"]
    assert [f.channel for f in stuck] == ["oil_temp_c"]
    assert stuck[0].kind == "narrow"
    assert stuck[0].value == pytest.approx(0.98)
    assert "oil_temp_c reads 71.5 in 98% of the samples" in stuck[0].message


def test_configured_ranges_compare_with_what_the_history_covered() -> None:
    # A day of the compressor covers a fair part of every configured range...
    compressor = configured_ranges(COMPRESSOR_CONFIG)
    day = check_history(simulated(DAY_ROWS, seed=7), TrainConfig(), compressor)
    assert "configured_range" not in rules(day)
    covered = {s.name: s.range_coverage for s in day.channels}
    assert covered["pressure_bar"] == pytest.approx(1.0 / 16.0, abs=0.01)  # 6.5..7.5 of 0..16
    assert covered["flow_m3min"] is None  # no [channels.flow_m3min] min/max
    # ...while a motor that never left one load covers a sliver of the current's 0..400 A.
    table = simulated(DAY_ROWS, seed=7)
    rng = np.random.default_rng(7)
    table.values[:, 1] = 88.0 + rng.normal(0.0, 0.8, table.rows)
    narrow = check_history(table, TrainConfig(), compressor)
    assert rules(narrow, "motor_current_a") == {"configured_range"}
    msg = next(f.message for f in narrow.findings if f.rule == "configured_range")
    assert "of its configured range 0 to 400" in msg


def test_an_empty_configured_range_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"channel 'pressure_bar': min 7\.0 is not below max 7\.0"):
        check_history(simulated(500, seed=2), TrainConfig(), {"pressure_bar": (7.0, 7.0)})


def test_labelled_rows_are_left_out_and_a_short_fault_makes_no_trend() -> None:
    table = simulated(DAY_ROWS, seed=8)
    late = slice(DAY_ROWS - DAY_ROWS // 20, None)  # the last 72 minutes: an oil cooler fails
    table.values[late, 2] += np.linspace(0.0, 40.0, DAY_ROWS // 20)

    def oil(check: HistoryCheck) -> ChannelSummary:
        return next(s for s in check.channels if s.name == "oil_temp_c")

    unlabelled = check_history(table, TrainConfig())
    # 5 % of the blocks barely move a median of pairwise slopes: no drift finding...
    assert "drift" not in rules(unlabelled, "oil_temp_c")
    table.labels["anomaly"][late] = 1
    labelled = check_history(table, TrainConfig())
    assert labelled.normal_rows == DAY_ROWS - DAY_ROWS // 20
    # ...though it widens the range seen, unless it is labelled.
    assert oil(unlabelled).high > oil(labelled).high + 5.0


def test_fit_records_the_check_in_the_run(trained_run: Path) -> None:
    # The shared run trains on 12,000 simulated rows (3.3 h): short in time, not refused.
    check = HistoryCheck.model_validate_json((trained_run / CHECK_FILE).read_text())
    assert "time_span" in rules(check)
    assert [s.name for s in check.channels] == list(simulate_plant(rows=100).channels)
    assert check.normal_rows < check.rows  # the labelled faults were left out


@needs_skab
def test_fit_warns_and_strict_history_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.cli import main

    out = tmp_path / "run"
    args = ["fit", "--data", str(SKAB_FREE / "anomaly-free.csv"), "--rows", "1881",
            "--out", str(out), "--agent-config", str(PUMP_CONFIG)]  # fmt: skip
    assert main([*args, "--strict-history"]) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0].startswith("warning: 94 independent training windows of 16 samples")
    assert any(ln.startswith("warning: Thermocouple drifts +0.879") for ln in lines)
    assert any("Thermocouple was seen from 26.87 to 27.76, 0.7% of its configured" in ln
               for ln in lines)  # fmt: skip
    assert "not training because of --strict-history" in lines[-1]
    assert not out.exists()


def test_strict_history_refuses_a_short_history_and_a_bad_config_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.cli import main

    csv = tmp_path / "short.csv"
    simulate_plant(rows=1_500, seed=9, anomaly_fraction=0.0).write_csv(csv)
    out = tmp_path / "run"
    base = ["fit", "--data", str(csv), "--label-col", "anomaly", "--out", str(out)]
    assert main([*base, "--strict-history"]) == 2
    err = capsys.readouterr().err
    assert "warning: the history covers 25 min, less than a day" in err
    assert "error: the history check found 3 problem(s)" in err
    assert not out.exists()

    missing = tmp_path / "nope.toml"
    assert main([*base, "--agent-config", str(missing)]) == 2
    assert f"error: {missing}: config file not found" in capsys.readouterr().err
    assert not out.exists()


def test_the_json_is_plain_json(tmp_path: Path) -> None:
    check = check_history(simulated(2_000, seed=10), TrainConfig())
    path = check.write(tmp_path)
    doc = json.loads(path.read_text())  # no NaN or Infinity tokens
    assert {f["rule"] for f in doc["findings"]} == rules(check)
    assert doc["channels"][0]["trend"]["ratio"] >= 0
