"""``python -m trainer federate`` end to end on real signed deltas.

The base is the session's real trained run; every gateway has its own key made by
``export keygen`` (its public half registered as ``KEYDIR/<machine>.pub``); deltas are made
with the gateway's own encoder (``edge_agent.learn.delta.encode_delta`` over a top-k
``sparsify``), some of them broken the ways the issue lists.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from federate_support import ROUND, Fleet, update

from edge_agent.learn.delta import decode_delta
from edge_agent.learn.weights import WeightSet
from export.run_dir import load_run
from export.train_weights import keras_weight_set
from trainer.cli import main
from trainer.federate.collect import load_device_keys
from trainer.federate.report import REPORT_FILE, FederateReport
from trainer.federate.server_opt import STATE_FILE
from trainer.run_record import RUN_FILE, RunRecord

HONEST = ("gw-a", "gw-b", "gw-c")
SAMPLES = {"gw-a": 100, "gw-b": 300, "gw-c": 600}


def _federate(run: Path, deltas: list[Path], keydir: Path, out: Path, *extra: str) -> int:
    argv = ["federate", "--run", str(run), "--deltas", *map(str, deltas)]
    argv += ["--trust-devices", str(keydir), "--out", str(out), "--round", ROUND, *extra]
    return main(argv)


def test_round_accepts_good_deltas_and_records_why_others_are_refused(
    trained_run: Path, base_weights: WeightSet, tmp_path: Path
) -> None:
    fleet = Fleet(tmp_path)
    for m in (*HONEST, "gw-replay", "gw-tamper", "gw-wrongbase"):
        fleet.register(m)
    fleet.register("gw-stranger")
    (fleet.keydir / "gw-stranger.pub").unlink()  # a key the fleet never registered
    good = {
        m: fleet.delta(m, base_weights, update(base_weights, i), samples=SAMPLES[m])
        for i, m in enumerate(HONEST)
    }
    tampered = fleet.delta("gw-tamper", base_weights, update(base_weights, 10))
    raw = bytearray(tampered.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    tampered.write_bytes(bytes(raw))
    other_base = WeightSet.from_flat(base_weights, base_weights.flat() + 1.0)
    bad = [
        tampered,
        fleet.delta("gw-stranger", base_weights, update(base_weights, 11)),
        fleet.delta("gw-replay", base_weights, update(base_weights, 12), round_id="r0"),
        fleet.delta("gw-replay", base_weights, update(base_weights, 13), name="gw-replay-2"),
        fleet.delta("gw-replay", base_weights, update(base_weights, 14), name="gw-replay-3"),
        fleet.delta("gw-wrongbase", other_base, update(base_weights, 15)),
        fleet.delta("gw-a", base_weights, update(base_weights, 16), signer="gw-b", name="forged"),
        tmp_path / "missing.eadl",
    ]
    out = tmp_path / "new"
    assert _federate(trained_run, [*good.values(), *bad], fleet.keydir, out) == 0

    report = FederateReport.model_validate_json((out / REPORT_FILE).read_text())
    reasons = {Path(c.source).name: c.reason for c in report.clients}
    assert reasons == {
        "gw-a.eadl": None,
        "gw-b.eadl": None,
        "gw-c.eadl": None,
        "gw-tamper.eadl": "bad_signature",
        "gw-stranger.eadl": "unknown_machine",
        "gw-replay.eadl": "wrong_round",
        "gw-replay-2.eadl": None,  # the first gw-replay delta of round r1 is accepted...
        "gw-replay-3.eadl": "replayed_round",  # ...its second is not
        "gw-wrongbase.eadl": "wrong_base",
        "forged.eadl": "bad_signature",
        "missing.eadl": "unreadable",
    }
    assert report.accepted == 4
    assert report.refused == 7
    assert report.parameters == base_weights.size
    assert report.bytes_received == sum(p.stat().st_size for p in [*good.values(), *bad][:-1])
    assert all(c.bytes > 0 for c in report.clients if c.reason != "unreadable")
    assert report.clip_mode == "median_multiple"
    assert report.settings.round_id == ROUND

    # The new weights are the base plus the sample-weighted mean of what was sent.
    sent = {}
    device_keys = load_device_keys(fleet.keydir)
    for path in [*good.values(), bad[3]]:
        d = decode_delta(
            path.read_bytes(),
            public_keys=device_keys,
            expected_base_fingerprint=base_weights.fingerprint(),
            tensor_sizes=base_weights.tensor_sizes,
        )
        sent[path.name] = (d.vector, d.header.samples)
    total = sum(s for _, s in sent.values())
    mean = sum(v.astype(np.float64) * s for v, s in sent.values()) / total
    assert all(c.clip_scale == 1.0 for c in report.clients if c.status == "accepted")
    new = keras_weight_set(load_run(out).model)
    np.testing.assert_allclose(new.flat(), base_weights.flat() + mean, atol=1e-6)
    record = RunRecord.model_validate(json.loads((out / RUN_FILE).read_text()))
    assert record.federation is not None
    assert record.federation.clients_accepted == 4
    assert record.federation.weights_fingerprint == new.fingerprint()
    assert record.threshold.alert_threshold == report.alert_threshold


def test_too_few_accepted_fails_with_exit_1_and_no_run(
    trained_run: Path, base_weights: WeightSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = Fleet(tmp_path)
    fleet.register("gw-a")
    ok = fleet.delta("gw-a", base_weights, update(base_weights, 0))
    late = fleet.delta("gw-a", base_weights, update(base_weights, 1), round_id="r0", name="old")
    out = tmp_path / "new"
    assert _federate(trained_run, [ok, late], fleet.keydir, out, "--min-clients", "2") == 1
    err = capsys.readouterr().err
    assert "1 of 2 deltas accepted, 2 needed (--min-clients)" in err
    assert "refused" in err
    assert "wrong_round" in err
    assert not out.exists()


def test_operator_errors_exit_2(
    trained_run: Path, base_weights: WeightSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = Fleet(tmp_path)
    fleet.register("gw-a")
    d = [fleet.delta("gw-a", base_weights, update(base_weights, 0))]
    out = tmp_path / "new"
    cases = [
        (tmp_path / "no-run", d, fleet.keydir, (), "base run directory not found"),
        (trained_run, d, tmp_path / "no-keys", (), "device key directory not found"),
        (trained_run, d, tmp_path, (), "no device keys"),
        (trained_run, d, fleet.keydir, ("--rule", "median", "--trim", "0.2"), "trim_fraction"),
        (trained_run, d, fleet.keydir, ("--trim", "0.7", "--rule", "trimmed_mean"), "0.5"),
    ]
    for run, deltas, keydir, extra, message in cases:
        assert _federate(run, deltas, keydir, out, *extra) == 2, message
        assert message in capsys.readouterr().err
    (fleet.keydir / "bad name!.pub").write_text("x")
    assert _federate(trained_run, d, fleet.keydir, out) == 2
    assert "is not a machine id" in capsys.readouterr().err
    assert not out.exists()
    argv = ["federate", "--run", str(trained_run)]
    argv += ["--trust-devices", str(fleet.keydir), "--out", str(out), "--round", ROUND]
    assert main(argv) == 2
    assert "give one of --deltas" in capsys.readouterr().err


def test_server_momentum_continues_into_the_next_round(
    trained_run: Path, base_weights: WeightSet, tmp_path: Path
) -> None:
    fleet = Fleet(tmp_path)
    fleet.register("gw-a")
    opt = ("--server-opt", "avgm", "--no-clip")
    up = update(base_weights, 0)
    first = tmp_path / "round1"
    assert (
        _federate(trained_run, [fleet.delta("gw-a", base_weights, up)], fleet.keydir, first, *opt)
        == 0
    )
    assert (first / STATE_FILE).is_file()
    r1 = FederateReport.model_validate_json((first / REPORT_FILE).read_text())
    assert r1.server_state == "fresh: the base run has no state"

    w1 = keras_weight_set(load_run(first).model)
    second = tmp_path / "round2"
    d2 = fleet.delta("gw-a", w1, up, name="again")
    assert _federate(first, [d2], fleet.keydir, second, *opt) == 0
    r2 = FederateReport.model_validate_json((second / REPORT_FILE).read_text())
    assert r2.server_state == "continued from step 1"
    # Same update twice with momentum 0.9: the second step is 1.9 times the first.
    assert r2.step_norm == pytest.approx(1.9 * r1.step_norm, rel=1e-3)
