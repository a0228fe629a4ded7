"""``trainer federate --broker`` against a real Mosquitto: announce, collect, aggregate.

Stand-in gateways (one paho connection publishing for several machine ids) read the signed
retained announcement with the gateway's own ``open_round``, make deltas against the weights
of the real bundle (``load_train_weights``) with the gateway's encoder, and publish them on
``<prefix>/<machine>/delta``; the desk collects them through its shared subscription.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from broker import Mosquitto, Subscriber

from edge_agent.bundle.verify import load_public_key, verify_bundle
from edge_agent.deliver.config import MqttConfig
from edge_agent.learn.bundle_weights import load_train_weights
from edge_agent.learn.delta import encode_delta
from edge_agent.learn.rounds import RoundAnnouncement, open_round, round_topic
from edge_agent.learn.sparse import sparsify
from export.broker import DeskLink
from export.keys import keygen, load_private_key
from trainer.cli import main
from trainer.federate.report import REPORT_FILE, FederateReport

PREFIX = "edge"
ROUND = "r7"
WAIT_S = 60.0  # upper bound for the desk to announce; the test never sleeps on it
MACHINES = ("gw-a", "gw-b", "gw-c")


def _register(root: Path, keydir: Path, machine: str) -> Path:
    priv, pub = keygen(root / "gateways" / machine)
    shutil.copy(pub, keydir / f"{machine}.pub")
    return priv


def _fleet(
    port: int, bundle: Path, fleet_pub: Path, senders: dict[str, Path], errors: list[str]
) -> None:
    """Wait for the announcement, then send one delta per machine in ``senders``."""
    try:
        with Subscriber(port, round_topic(PREFIX)) as sub:
            got = sub.wait_for(1, WAIT_S)
        ann = open_round(got[0].payload, [load_public_key(fleet_pub)])
        verified = verify_bundle(bundle, fleet_pub)
        base = load_train_weights(bundle, verified.manifest)
        assert base is not None
        sizes = tuple(int(a.size) for a in base.arrays)
        rng = np.random.default_rng(0)
        messages = []
        for machine, key in senders.items():
            update = rng.normal(0.0, 1e-3, base.size).astype(np.float32)
            data = encode_delta(
                sparsify(update, sizes, ann.topk_fraction),
                base=base,
                machine_id=machine,
                model_version=ann.base_model_version,
                round_id=ann.round_id,
                samples=100,
                epochs=ann.epochs,
                key=load_private_key(key),
            )
            messages.append((f"{PREFIX}/{machine}/delta", data))
        cfg = MqttConfig.model_validate({"host": "127.0.0.1", "port": port})
        with DeskLink(cfg) as link:
            link.publish(messages, retain=False)
    except Exception as exc:  # reported by the test, not lost in the thread
        errors.append(repr(exc))


def _argv(run: Path, bundle: Path, keys: Path, keydir: Path, out: Path, port: int) -> list[str]:
    return [
        "federate",
        "--run", str(run),
        "--trust-devices", str(keydir),
        "--out", str(out),
        "--round", ROUND,
        "--broker", f"127.0.0.1:{port}",
        "--bundle", str(bundle),
        "--key", str(keys / "signing.key"),
        "--epochs", "3",
        "--topk-fraction", "0.05",
    ]  # fmt: skip


def test_broker_round_announces_collects_and_aggregates(
    trained_run: Path,
    bundle: Path,
    keys: Path,
    mosquitto: Mosquitto,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keydir = tmp_path / "devices"
    keydir.mkdir()
    senders = {m: _register(tmp_path, keydir, m) for m in MACHINES}
    # An unregistered gateway answers first: it is spooled and refused.
    stranger = {"gw-x": keygen(tmp_path / "gateways" / "gw-x")[0]}
    errors: list[str] = []
    fleet = threading.Thread(
        target=_fleet,
        args=(mosquitto.port, bundle, keys / "signing.pub", {**stranger, **senders}, errors),
    )
    fleet.start()
    out = tmp_path / "new"
    argv = _argv(trained_run, bundle, keys, keydir, out, mosquitto.port)
    code = main([*argv, "--round-timeout", str(WAIT_S)])
    fleet.join()
    assert errors == []
    assert code == 0, capsys.readouterr().err
    assert "every registered gateway answered" in capsys.readouterr().out

    report = FederateReport.model_validate_json((out / REPORT_FILE).read_text())
    assert report.accepted == 3
    assert {c.machine for c in report.clients if c.status == "accepted"} == set(MACHINES)
    assert [c.reason for c in report.clients if c.status == "refused"] == ["unknown_machine"]
    spooled = sorted((tmp_path / "new.deltas").iterdir())
    assert len(spooled) == 4
    assert report.bytes_received == sum(p.stat().st_size for p in spooled)

    # The retained announcement names the bundle's model and the base run's weights.
    with Subscriber(mosquitto.port, round_topic(PREFIX)) as sub:
        payload = sub.wait_for(1, WAIT_S)[0].payload
    ann = open_round(payload, [load_public_key(keys / "signing.pub")])
    assert isinstance(ann, RoundAnnouncement)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert ann.base_model_version == manifest["model_version"]
    assert ann.base_fingerprint == report.base_fingerprint
    assert (ann.round_id, ann.epochs, ann.topk_fraction) == (ROUND, 3, 0.05)


def test_broker_round_without_answers_fails_at_the_deadline(
    trained_run: Path,
    bundle: Path,
    keys: Path,
    mosquitto: Mosquitto,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keydir = tmp_path / "devices"
    keydir.mkdir()
    _register(tmp_path, keydir, "gw-silent")
    out = tmp_path / "new"
    argv = _argv(trained_run, bundle, keys, keydir, out, mosquitto.port)
    assert main([*argv, "--round-timeout", "1"]) == 1
    assert "0 of 0 deltas accepted, 1 needed" in capsys.readouterr().err
    assert not out.exists()


def test_broker_mode_operator_errors(
    trained_run: Path, bundle: Path, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keydir = tmp_path / "devices"
    keydir.mkdir()
    _register(tmp_path, keydir, "gw-a")
    out = tmp_path / "new"
    argv = _argv(trained_run, bundle, keys, keydir, out, 1)
    no_bundle = [a for a in argv if a not in ("--bundle", str(bundle))]
    assert main(no_bundle) == 2
    assert "--bundle and --key go together" in capsys.readouterr().err
    assert main([*argv, "--deltas", str(tmp_path / "d.eadl")]) == 2
    assert "give one of --deltas" in capsys.readouterr().err
    other = tmp_path / "other-keys"
    keygen(other)
    argv_other = [*argv[:-4], "--key", str(other / "signing.key"), *argv[-2:]]
    assert main(argv_other) == 2  # the bundle is not signed by this key
    assert "signature" in capsys.readouterr().err
    assert not out.exists()
