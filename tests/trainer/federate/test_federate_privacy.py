"""Central differential privacy at the desk (``trainer.federate.privacy``): equal weights, every
update clipped to C, noise of std z·C on the sum drawn once; the guarantee composed over the
run's lineage; ``trainer federate --dp-*`` end to end on real signed deltas, whose new weights
differ from plain FedAvg's by noise of the stated scale; a ``--broker`` round (real Mosquitto)
whose signed announcement asks the gateways for local DP; and the operator errors.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from broker import Mosquitto, Subscriber
from federate_support import ROUND, Fleet, update

from edge_agent.bundle.verify import load_public_key
from edge_agent.learn.accountant import epsilon
from edge_agent.learn.privacy_config import DevicePrivacy
from edge_agent.learn.rounds import RoundAnnouncement, open_round, round_topic
from edge_agent.learn.weights import WeightSet
from export.run_dir import load_run
from export.train_weights import keras_weight_set
from trainer.cli import main
from trainer.federate.privacy import (
    CentralPrivacy,
    GaussianMeanAggregator,
    lineage,
    privacy_report,
)
from trainer.federate.report import REPORT_FILE, FederateReport
from trainer.federate.rules import make_aggregator
from trainer.federate.settings import FederateSettings
from trainer.run_record import RUN_FILE, FederationSummary, RunRecord

TEST_SEED = 7  # tests only: the desk never seeds its noise
SIZE = 100_000
STD_REL_TOLERANCE = 0.02  # ~4.5 standard errors of a sample std over 100k draws
DELTA = 1e-5
SHA = "0" * 64


def _summary(multipliers: list[float] | None) -> FederationSummary:
    extra = {} if multipliers is None else {"dp_noise_multipliers": multipliers}
    return FederationSummary(round_id="r0", clients_accepted=1, clients_refused=0, samples=1,
                             rule="fedavg", server_opt="none", base_fingerprint=SHA,
                             weights_fingerprint=SHA, **extra)


def test_noise_on_the_mean_has_std_z_c_over_k_and_weights_are_equal() -> None:
    privacy = CentralPrivacy(clip_norm=2.0, noise_multiplier=1.5)
    rng = np.random.default_rng(TEST_SEED)
    updates = [(rng.standard_normal(SIZE) * 1e-3).astype(np.float32) for _ in range(4)]
    agg = GaussianMeanAggregator(SIZE, privacy, np.random.default_rng(TEST_SEED))
    for u, samples in zip(updates, (1, 10, 100, 1000), strict=True):
        agg.add(u, samples)  # norms ~0.3 < C: not clipped; samples do not weigh
    noise = agg.result().astype(np.float64) - np.mean(updates, axis=0, dtype=np.float64)
    assert noise.std() == pytest.approx(1.5 * 2.0 / 4, rel=STD_REL_TOLERANCE)
    assert abs(noise.mean()) < 5 * (1.5 * 2.0 / 4) / np.sqrt(SIZE)
    assert agg.result() is agg.result()  # drawn once: a second draw would release it twice
    with pytest.raises(ValueError, match="already drawn"):
        agg.add(updates[0], 1)
    with pytest.raises(ValueError, match="one aggregator process"):
        agg.merge(GaussianMeanAggregator(SIZE, privacy))


def test_every_update_is_clipped_to_c_whatever_the_caller_did() -> None:
    privacy = CentralPrivacy(clip_norm=0.5, noise_multiplier=1e-9)  # noise negligible here
    agg = GaussianMeanAggregator(3, privacy, np.random.default_rng(TEST_SEED))
    agg.add(np.array([30.0, 40.0, 0.0], np.float32), 5)  # norm 50 -> 0.5
    agg.add(np.array([0.0, 0.0, 0.1], np.float32), 500)  # under the bound: kept
    np.testing.assert_allclose(agg.result(), [0.15, 0.2, 0.05], atol=1e-6)
    assert (agg.count, agg.samples) == (2, 505)


def test_settings_pick_the_noised_aggregator_and_refuse_what_breaks_the_guarantee() -> None:
    privacy = CentralPrivacy(clip_norm=0.1, noise_multiplier=1.0)
    settings = FederateSettings(round_id="r1", clip_norm=0.1, privacy=privacy)
    assert isinstance(make_aggregator(settings, 10), GaussianMeanAggregator)
    assert privacy.delta == DELTA
    for bad in ({"clip_norm": None}, {"clip_norm": 0.2},
                {"clip_norm": 0.1, "rule": "median"}):  # fmt: skip
        with pytest.raises(ValueError, match="central DP needs rule fedavg"):
            FederateSettings.model_validate({"round_id": "r1", "privacy": privacy, **bad})


def test_the_lineage_composes_over_rounds() -> None:
    p = CentralPrivacy(clip_norm=0.1, noise_multiplier=2.0)
    assert lineage(None, p) == [2.0]  # on a fitted run: the first round
    assert lineage(None, None) == [0.0]
    assert lineage(_summary([2.0, 2.0]), p) == [2.0, 2.0, 2.0]
    assert lineage(_summary(None), p) == [0.0, 2.0]  # an older federated run: no noise known
    one, three = privacy_report(p, [2.0], 4), privacy_report(p, [2.0] * 3, 4)
    assert one.epsilon == pytest.approx(epsilon([2.0], DELTA).epsilon)
    assert three.epsilon == pytest.approx(epsilon([2.0] * 3, DELTA).epsilon)
    assert one.epsilon is not None
    assert three.epsilon is not None
    assert three.epsilon > one.epsilon
    assert (three.lineage_rounds, three.private_rounds, three.noise_std_mean) == (3, 3, 0.05)
    void = privacy_report(p, [0.0, 2.0], 4)
    assert void.epsilon is None
    assert void.rdp_order is None
    assert void.private_rounds == 1


def _federate(run: Path, deltas: list[Path], keydir: Path, out: Path, *extra: str,
              round_id: str = ROUND) -> int:
    argv = ["federate", "--run", str(run), "--deltas", *map(str, deltas), "--trust-devices",
            str(keydir), "--out", str(out), "--round", round_id, *extra]
    return main(argv)


def test_federate_with_central_dp_end_to_end(
    trained_run: Path, base_weights: WeightSet, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet = Fleet(tmp_path)
    machines = ("gw-a", "gw-b", "gw-c")
    for m in machines:
        fleet.register(m)
    deltas = [fleet.delta(m, base_weights, update(base_weights, i))
              for i, m in enumerate(machines)]  # equal samples: plain fedavg = equal weights
    plain, private = tmp_path / "plain", tmp_path / "private"
    assert _federate(trained_run, deltas, fleet.keydir, plain, "--no-clip") == 0
    z, clip = 0.5, 0.2  # above the deltas' norms (0.08): the clip does not bind
    dp = ("--dp-noise-multiplier", str(z), "--dp-clip", str(clip))
    capsys.readouterr()
    assert _federate(trained_run, deltas, fleet.keydir, private, *dp) == 0
    printed = json.loads(capsys.readouterr().out)
    want = epsilon([z], DELTA).epsilon
    assert printed["privacy"]["epsilon"] == pytest.approx(want)

    report = FederateReport.model_validate_json((private / REPORT_FILE).read_text())
    assert report.privacy is not None
    assert report.privacy.epsilon == pytest.approx(want)
    assert report.privacy.noise_std_mean == pytest.approx(z * clip / 3)
    assert report.clip_mode == "fixed"
    assert report.clip_bounds == [clip]
    assert all(c.clip_scale == 1.0 for c in report.clients)
    plain_report = FederateReport.model_validate_json((plain / REPORT_FILE).read_text())
    assert plain_report.privacy is None
    assert plain_report.settings.privacy is None
    plain_run = RunRecord.model_validate(json.loads((plain / RUN_FILE).read_text()))
    assert plain_run.federation is not None
    assert plain_run.federation.dp_noise_multipliers == [0.0]

    # The private weights are plain FedAvg's plus noise of std z * C / K per coordinate.
    diff = (keras_weight_set(load_run(private).model).flat().astype(np.float64)
            - keras_weight_set(load_run(plain).model).flat())
    assert diff.std() == pytest.approx(z * clip / 3, rel=0.1)

    # The next round on the private run composes: its lineage holds both rounds.
    new_base = keras_weight_set(load_run(private).model)
    again = [fleet.delta(m, new_base, update(new_base, 10 + i), round_id="r2")
             for i, m in enumerate(machines)]
    second = tmp_path / "second"
    assert _federate(private, again, fleet.keydir, second, *dp, round_id="r2") == 0
    record = RunRecord.model_validate(json.loads((second / RUN_FILE).read_text()))
    assert record.federation is not None
    assert record.federation.dp_noise_multipliers == [z, z]
    composed = FederateReport.model_validate_json((second / REPORT_FILE).read_text()).privacy
    assert composed is not None
    assert composed.epsilon == pytest.approx(epsilon([z, z], DELTA).epsilon)
    # A later round without noise: the lineage is recorded, no finite guarantee is claimed.
    third = tmp_path / "third"
    base3 = keras_weight_set(load_run(second).model)
    last = [fleet.delta("gw-a", base3, update(base3, 20), round_id="r3")]
    assert _federate(second, last, fleet.keydir, third, round_id="r3") == 0
    record = RunRecord.model_validate(json.loads((third / RUN_FILE).read_text()))
    assert record.federation is not None
    assert record.federation.dp_noise_multipliers == [z, z, 0.0]


def test_privacy_option_errors_exit_2(
    trained_run: Path, base_weights: WeightSet, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet = Fleet(tmp_path)
    fleet.register("gw-a")
    d = [fleet.delta("gw-a", base_weights, update(base_weights, 0))]
    cases = [
        (("--dp-clip", "0.1"), "needs both --dp-noise-multiplier"),
        (("--dp-delta", "1e-6"), "needs both --dp-noise-multiplier"),
        (("--dp-noise-multiplier", "1", "--dp-clip", "0.1", "--clip-multiple", "3"),
         "drop --clip-norm"),
        (("--dp-noise-multiplier", "1", "--dp-clip", "0.1", "--rule", "median"),
         "central DP needs rule fedavg"),
        (("--dp-noise-multiplier", "0", "--dp-clip", "0.1"), "noise_multiplier"),
        (("--dp-noise-multiplier", "1", "--dp-clip", "0.1", "--dp-delta", "1"), "delta"),
        (("--local-dp-clip", "0.1", "--local-dp-noise-multiplier", "1"), "--broker"),
        (("--local-dp-clip", "0.1"), "needs both --local-dp-noise-multiplier"),
    ]
    for extra, message in cases:
        out = tmp_path / "never"
        assert _federate(trained_run, d, fleet.keydir, out, *extra) == 2, extra
        assert message in capsys.readouterr().err, extra
        assert not out.exists()
    argv = ["federate", "--run", str(trained_run), "--deltas", str(d[0]), "--trust-devices",
            str(fleet.keydir), "--partial-out", str(tmp_path / "p.npz"), "--round", ROUND,
            "--dp-noise-multiplier", "1", "--dp-clip", "0.1"]
    assert main(argv) == 2
    assert "runs in one process" in capsys.readouterr().err


def test_broker_round_asks_the_gateways_for_local_dp_and_adds_central_noise(
    trained_run: Path, bundle: Path, keys: Path, mosquitto: Mosquitto, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from test_federate_broker import MACHINES, _argv, _fleet, _register

    keydir = tmp_path / "devices"
    keydir.mkdir()
    senders = {m: _register(tmp_path, keydir, m) for m in MACHINES}
    errors: list[str] = []
    seen: list[RoundAnnouncement] = []

    def fleet() -> None:
        try:
            with Subscriber(mosquitto.port, round_topic("edge")) as sub:
                payload = sub.wait_for(1, 60.0)[0].payload
            seen.append(open_round(payload, [load_public_key(keys / "signing.pub")]))
        except Exception as exc:  # reported by the test, not lost in the thread
            errors.append(repr(exc))
            return
        _fleet(mosquitto.port, bundle, keys / "signing.pub", senders, errors)

    thread = threading.Thread(target=fleet)
    thread.start()
    out = tmp_path / "new"
    argv = _argv(trained_run, bundle, keys, keydir, out, mosquitto.port)
    code = main([*argv, "--round-timeout", "60", "--local-dp-clip", "0.05",
                 "--local-dp-noise-multiplier", "1.1", "--dp-clip", "0.2",
                 "--dp-noise-multiplier", "0.7"])
    thread.join()
    assert errors == []
    assert code == 0, capsys.readouterr().err
    assert seen[0].privacy == DevicePrivacy(clip_norm=0.05, noise_multiplier=1.1)
    report = FederateReport.model_validate_json((out / REPORT_FILE).read_text())
    assert report.accepted == len(MACHINES)
    assert report.privacy is not None
    assert report.privacy.epsilon == pytest.approx(epsilon([0.7], DELTA).epsilon)
