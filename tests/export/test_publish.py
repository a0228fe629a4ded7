"""``export publish`` against a real Mosquitto, with stand-in gateways playing their part.

The bundle is the real signed int8 bundle of the session; the gateways are
:class:`publish_support.FakeGateway` (the real updater is tested with real agents under
tests/edge_agent/ota). What a gateway that was offline during the push sees is what a
subscriber that connects afterwards gets retained.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Mosquitto
from publish_support import HAPPY, HOLD, PREFIX, WAIT_S, FakeGateway, publish, retained

from edge_agent.bundle.manifest import MANIFEST_NAME
from edge_agent.bundle.verify import load_public_key, verify_bundle
from edge_agent.ota.protocol import (
    machine_deployment_topic,
    open_deployment,
    parse_chunk_topic,
    parse_time,
    sha256_hex,
)
from export.cli import main
from export.ota_cli import DOWNGRADE_EXPIRY_S

ISO_RESOLUTION_S = 0.002  # both stamps are rounded to the millisecond


class Background:
    """``publish`` in a thread, so the test can act while it waits on the gateways."""

    def __init__(self, *args: object) -> None:
        self.rc: int | None = None
        self._thread = threading.Thread(target=self._run, args=args, daemon=True)
        self._thread.start()

    def _run(self, *args: object) -> None:
        self.rc = publish(*args)  # type: ignore[arg-type]

    def result(self) -> int | None:
        self._thread.join(WAIT_S * 3)
        return self.rc


@pytest.fixture
def gateways(mosquitto: Mosquitto, keys: Path) -> Iterator[list[FakeGateway]]:
    made: list[FakeGateway] = []
    yield made
    for g in made:
        g.stop()


def gateway(
    made: list[FakeGateway], port: int, keys: Path, machine: str, **kw: object
) -> FakeGateway:
    g = FakeGateway(port, machine, keys / "signing.pub", **kw)  # type: ignore[arg-type]
    made.append(g.start())
    return g


def last(log: list[str], entry: str) -> int:
    return len(log) - 1 - log[::-1].index(entry)


def test_publish_retains_every_chunk_and_a_signed_deployment_for_a_late_gateway(
    mosquitto: Mosquitto, bundle: Path, keys: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert publish(mosquitto.port, bundle, keys, "--machine", "m1", "--no-wait") == 0
    assert "--no-wait" in capsys.readouterr().out
    # A gateway offline during the push connects now: everything it needs is retained.
    topic = machine_deployment_topic(PREFIX, "m1")
    trusted = [load_public_key(keys / "signing.pub")]
    dep = open_deployment(retained(mosquitto.port, topic, 1)[topic], trusted)
    assert dep.targets.machines == ["m1"]
    assert not dep.targets.groups
    assert MANIFEST_NAME in dep.files
    assert "manifest.sig" in dep.files
    n_chunks = len({(f.sha256, i) for f in dep.files.values() for i in range(len(f.chunks))})
    chunks = retained(mosquitto.port, f"{PREFIX}/ota/blob/#", n_chunks)
    by_key = {parse_chunk_topic(PREFIX, t): p for t, p in chunks.items()}
    out = tmp_path / "downloaded"
    out.mkdir()
    for name, f in dep.files.items():
        parts = [by_key[(f.sha256, i)] for i in range(len(f.chunks))]
        assert [sha256_hex(p) for p in parts] == f.chunks
        data = b"".join(parts)
        assert sha256_hex(data) == f.sha256
        assert len(data) == f.size
        (out / name).write_bytes(data)
    # Put back together from the broker alone, it is the bundle, signature and all.
    got = verify_bundle(out, keys / "signing.pub")
    assert got.digest == dep.manifest_sha256 == verify_bundle(bundle, keys / "signing.pub").digest
    assert dep.model_version == got.manifest.model_version


def test_publish_follows_a_gateway_to_active(
    mosquitto: Mosquitto, bundle: Path, keys: Path, gateways: list[FakeGateway],
    capsys: pytest.CaptureFixture[str],
) -> None:
    g = gateway(gateways, mosquitto.port, keys, "m1")
    assert publish(mosquitto.port, bundle, keys, "--machine", "m1") == 0
    assert not g.errors
    [dep] = g.deployments
    assert g.files[MANIFEST_NAME] == (bundle / MANIFEST_NAME).read_bytes()
    out = capsys.readouterr().out
    for line in ("m1: downloading 100 %", "m1: canary", "m1: probation",
                 f"m1: active {dep.model_version}", "summary: 1 active"):
        assert line in out, out


def test_a_rejected_update_exits_1_with_the_reason(
    mosquitto: Mosquitto, bundle: Path, keys: Path, gateways: list[FakeGateway],
    capsys: pytest.CaptureFixture[str],
) -> None:
    gateway(gateways, mosquitto.port, keys, "m1", script=("downloading", "verifying", "rejected"),
            reason="older than the active release")
    assert publish(mosquitto.port, bundle, keys, "--machine", "m1") == 1
    out = capsys.readouterr().out
    assert "m1: rejected: older than the active release" in out
    assert "summary: 1 rejected" in out


def test_a_group_deployment_reaches_its_members_only(
    mosquitto: Mosquitto, bundle: Path, keys: Path, gateways: list[FakeGateway],
    capsys: pytest.CaptureFixture[str],
) -> None:
    a1 = gateway(gateways, mosquitto.port, keys, "a1", groups=["line-a"])
    a2 = gateway(gateways, mosquitto.port, keys, "a2", groups=["line-a", "north"])
    b1 = gateway(gateways, mosquitto.port, keys, "b1", groups=["line-b"])
    assert publish(mosquitto.port, bundle, keys, "--group", "line-a") == 0
    out = capsys.readouterr().out
    assert "members known: a1, a2" in out
    assert "summary: 2 active" in out
    for g in (a1, a2):
        [dep] = g.deployments
        assert dep.targets.groups == ["line-a"]
        assert not dep.targets.machines
    assert not b1.deployments  # another group's


def test_waves_send_to_the_next_machine_only_after_the_current_is_active(
    mosquitto: Mosquitto, bundle: Path, keys: Path, gateways: list[FakeGateway],
    capsys: pytest.CaptureFixture[str],
) -> None:
    log: list[str] = []
    m1 = gateway(gateways, mosquitto.port, keys, "m1", script=(*HAPPY[:4], HOLD, "active"), log=log)
    m2 = gateway(gateways, mosquitto.port, keys, "m2", log=log)
    m3 = gateway(gateways, mosquitto.port, keys, "m3", log=log)
    run = Background(mosquitto.port, bundle, keys, "--machine", "m1", "--machine", "m2",
                     "--machine", "m3", "--wave", "1")
    m1.wait_deployments(1)
    # While m1 is on probation, the broker holds a deployment for m1 only.
    held = retained(mosquitto.port, f"{PREFIX}/ota/machine/+/deployment", 1)
    assert list(held) == [machine_deployment_topic(PREFIX, "m1")]
    assert not m2.deployments
    assert not m3.deployments
    m1.release()
    assert run.result() == 0
    got = "got " + m1.deployments[0].deployment_id
    assert log.index(f"m2 {got}") > last(log, "m1 active")  # the update's, not the first report
    assert log.index(f"m3 {got}") > last(log, "m2 active")
    out = capsys.readouterr().out
    assert "wave 1/3: m1" in out
    assert "wave 3/3: m3" in out
    assert "summary: 3 active" in out
    assert [d.targets.machines for d in m2.deployments] == [["m2"]]


def test_halt_on_rollback_stops_the_rollout_and_leaves_the_rest_untouched(
    mosquitto: Mosquitto, bundle: Path, keys: Path, gateways: list[FakeGateway],
    capsys: pytest.CaptureFixture[str],
) -> None:
    gateway(gateways, mosquitto.port, keys, "m1", script=(*HAPPY[:4], "rolled_back"),
            reason="probation: alert rate 12x the previous model")
    m2 = gateway(gateways, mosquitto.port, keys, "m2")
    m3 = gateway(gateways, mosquitto.port, keys, "m3")
    rc = publish(mosquitto.port, bundle, keys, "--machine", "m1", "--machine", "m2",
                 "--machine", "m3", "--wave", "1", "--halt-on-rollback")
    assert rc == 1
    out = capsys.readouterr().out
    assert "halted: m1 rolled back to v0-old: probation: alert rate 12x" in out
    assert "2 not sent" in out
    held = retained(mosquitto.port, f"{PREFIX}/ota/machine/+/deployment", 1)
    assert list(held) == [machine_deployment_topic(PREFIX, "m1")]
    assert not m2.deployments
    assert not m3.deployments


def test_a_bundle_that_does_not_verify_is_never_published(
    mosquitto: Mosquitto, bundle: Path, keys: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    victim = next(p for p in sorted(bad.iterdir()) if p.suffix == ".tflite")
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert publish(mosquitto.port, bad, keys, "--machine", "m1") == 2
    assert "does not match its SHA-256" in capsys.readouterr().err
    assert "export-" not in mosquitto.log()  # it never even connected


def test_a_key_that_did_not_sign_the_bundle_is_refused(
    mosquitto: Mosquitto, bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["keygen", "--out", str(tmp_path / "other")]) == 0
    assert publish(mosquitto.port, bundle, tmp_path / "other", "--machine", "m1") == 2
    assert "signature does not match" in capsys.readouterr().err


def test_an_unreachable_broker_and_bad_names_are_input_errors(
    bundle: Path, keys: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from broker import free_port

    assert publish(free_port(), bundle, keys, "--machine", "m1") == 2
    assert "unreachable" in capsys.readouterr().err
    assert publish(free_port(), bundle, keys, "--machine", "m/1") == 2
    assert "not topic-safe" in capsys.readouterr().err


def test_a_publish_the_broker_refuses_names_the_topic(
    tmp_path: Path, bundle: Path, keys: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    acl = tmp_path / "acl"
    acl.write_text(f"topic read {PREFIX}/#\n")  # anonymous clients may read, not write
    broker = Mosquitto(tmp_path / "broker", acl_file=acl)
    broker.start()
    try:
        assert publish(broker.port, bundle, keys, "--machine", "m1", "--no-wait") == 2
    finally:
        broker.stop()
    err = capsys.readouterr().err
    assert f"refused the publish to {PREFIX}/ota/blob/" in err
    assert "Not authorized" in err


@pytest.mark.parametrize(
    ("extra", "allow", "lifetime_s"),
    [
        ((), False, None),
        (("--expires-in", "60"), False, 60.0),
        (("--allow-downgrade",), True, DOWNGRADE_EXPIRY_S),  # a downgrade always expires
        (("--allow-downgrade", "--expires-in", "600"), True, 600.0),
    ],
)
def test_expiry_and_downgrade_are_signed_into_the_deployment(
    mosquitto: Mosquitto, bundle: Path, keys: Path, extra: tuple[str, ...], allow: bool,
    lifetime_s: float | None,
) -> None:
    assert publish(mosquitto.port, bundle, keys, "--machine", "m1", "--no-wait", *extra) == 0
    topic = machine_deployment_topic(PREFIX, "m1")
    dep = open_deployment(
        retained(mosquitto.port, topic, 1)[topic], [load_public_key(keys / "signing.pub")]
    )
    assert dep.allow_downgrade is allow
    if lifetime_s is None:
        assert dep.expires_at is None
    else:
        assert dep.expires_at is not None
        lifetime = parse_time(dep.expires_at) - parse_time(dep.issued_at)
        assert lifetime == pytest.approx(lifetime_s, abs=ISO_RESOLUTION_S)
