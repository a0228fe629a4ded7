"""A round split over several aggregator processes: partial sums, then ``--merge``.

Two workers each verify and sum a share of real signed deltas (``--partial-out``); merging
their partials gives the same new weights as one process over all the deltas. The merge
refuses partials of another round and a gateway accepted by two workers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from federate_support import ROUND, Fleet, update

from edge_agent.learn.weights import WeightSet
from export.run_dir import load_run
from export.train_weights import keras_weight_set
from trainer.cli import main
from trainer.federate.report import REPORT_FILE, FederateReport

MACHINES = tuple(f"gw-{i}" for i in range(6))
CLIP = ("--clip-norm", "0.05")  # one fixed bound, so every worker clips alike


def _argv(run: Path, keydir: Path, *extra: str) -> list[str]:
    return ["federate", "--run", str(run), "--round", ROUND, "--trust-devices", str(keydir),
            *CLIP, *extra]  # fmt: skip


@pytest.fixture
def fleet_deltas(base_weights: WeightSet, tmp_path: Path) -> tuple[Fleet, list[Path]]:
    fleet = Fleet(tmp_path)
    deltas = []
    for i, m in enumerate(MACHINES):
        fleet.register(m)
        deltas.append(fleet.delta(m, base_weights, update(base_weights, i), samples=50 * (i + 1)))
    return fleet, deltas


def test_merged_partials_equal_one_aggregator(
    trained_run: Path, fleet_deltas: tuple[Fleet, list[Path]], tmp_path: Path
) -> None:
    fleet, deltas = fleet_deltas
    one, merged = tmp_path / "one", tmp_path / "merged"
    assert main([*_argv(trained_run, fleet.keydir, "--out", str(one)), "--deltas",
                 *map(str, deltas)]) == 0  # fmt: skip
    parts = [tmp_path / "p1.npz", tmp_path / "p2.npz"]
    for part, share in zip(parts, (deltas[:2], deltas[2:]), strict=True):
        argv = _argv(trained_run, fleet.keydir, "--partial-out", str(part))
        assert main([*argv, "--deltas", *map(str, share)]) == 0
        assert not (tmp_path / "one.deltas").exists()
    argv = ["federate", "--run", str(trained_run), "--round", ROUND, "--out", str(merged)]
    assert main([*argv, *CLIP, "--merge", *map(str, parts)]) == 0

    w_one = keras_weight_set(load_run(one).model).flat()
    w_merged = keras_weight_set(load_run(merged).model).flat()
    np.testing.assert_allclose(w_merged, w_one, rtol=0, atol=1e-7)
    report = FederateReport.model_validate_json((merged / REPORT_FILE).read_text())
    single = FederateReport.model_validate_json((one / REPORT_FILE).read_text())
    assert report.accepted == len(MACHINES)
    assert report.samples == single.samples
    assert report.bytes_received == single.bytes_received
    assert report.clip_bounds == [0.05, 0.05]
    assert sorted(c.machine or "" for c in report.clients) == list(MACHINES)


def test_merge_refuses_a_gateway_counted_twice_and_another_round(
    trained_run: Path,
    fleet_deltas: tuple[Fleet, list[Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet, deltas = fleet_deltas
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    for part, share in ((a, deltas[:3]), (b, deltas[2:])):  # gw-2 in both shares
        argv = _argv(trained_run, fleet.keydir, "--partial-out", str(part))
        assert main([*argv, "--deltas", *map(str, share)]) == 0
    out = tmp_path / "merged"
    argv = ["federate", "--run", str(trained_run), "--out", str(out), *CLIP]
    assert main([*argv, "--round", ROUND, "--merge", str(a), str(b)]) == 2
    assert "gw-2 was accepted by two aggregators" in capsys.readouterr().err
    assert main([*argv, "--round", "r2", "--merge", str(a)]) == 2
    assert "round 'r1', not 'r2'" in capsys.readouterr().err
    (tmp_path / "junk.npz").write_bytes(b"junk")
    assert main([*argv, "--round", ROUND, "--merge", str(tmp_path / "junk.npz")]) == 2
    assert "not a federate partial" in capsys.readouterr().err
    assert not out.exists()


def test_split_option_errors(
    trained_run: Path,
    fleet_deltas: tuple[Fleet, list[Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet, deltas = fleet_deltas
    part = str(tmp_path / "p.npz")
    cases = [
        (("--partial-out", part, "--rule", "median"), "only fedavg splits"),
        (("--partial-out", part, "--out", str(tmp_path / "o")), "give --out NEW_RUN, or"),
        ((), "give --out NEW_RUN, or"),
    ]
    for extra, message in cases:
        argv = _argv(trained_run, fleet.keydir, *extra)
        assert main([*argv, "--deltas", str(deltas[0])]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "p.npz").exists()
