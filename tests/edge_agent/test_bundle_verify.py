"""A gateway refuses unsigned, re-signed, tampered, incomplete or incompatible bundles, and
bundles that reach outside themselves through symbolic links; it accepts any trusted key."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from bundles import point_link, resigned_copy

import edge_agent.bundle.verify as verify_module
from edge_agent.bundle.verify import verify_bundle
from edge_agent.cli import main as agent_main
from edge_agent.errors import BundleError
from export.keys import keygen, load_private_key


@pytest.fixture
def copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(bundle, dst)
    return dst


def test_good_bundle_verifies(bundle: Path, keys: Path) -> None:
    b = verify_bundle(bundle, keys / "signing.pub")
    # train_weights.npz: the float weights for fleet learning (a dense model).
    assert set(b.files) == {"forest.npz", "model_int8.tflite", "train_weights.npz"}
    assert b.manifest.schema_version == 1
    assert (keys / "signing.key").stat().st_mode & 0o777 == 0o600


def test_tampered_model_file(copy: Path, keys: Path) -> None:
    data = bytearray((copy / "model_int8.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model_int8.tflite").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model_int8\.tflite does not match its SHA-256"):
        verify_bundle(copy, keys / "signing.pub")


def test_edited_manifest_breaks_the_signature(copy: Path, keys: Path) -> None:
    doc = json.loads((copy / "manifest.json").read_text())
    doc["threshold"]["alert_threshold"] *= 10
    (copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="signature does not match"):
        verify_bundle(copy, keys / "signing.pub")


def test_unsigned_and_foreign_key(copy: Path, keys: Path, tmp_path: Path) -> None:
    _, other_pub = keygen(tmp_path / "other")
    with pytest.raises(BundleError, match="signature does not match"):
        verify_bundle(copy, other_pub)
    (copy / "manifest.sig").unlink()
    with pytest.raises(BundleError, match="unsigned bundle"):
        verify_bundle(copy, keys / "signing.pub")


def test_missing_file_and_newer_schema(copy: Path, keys: Path) -> None:
    key = load_private_key(keys / "signing.key")
    doc = json.loads((copy / "manifest.json").read_text())
    doc["schema_version"] = 99
    raw = json.dumps(doc).encode()
    (copy / "manifest.json").write_bytes(raw)
    (copy / "manifest.sig").write_bytes(key.sign(raw))
    with pytest.raises(BundleError, match="schema_version 99 is not supported"):
        verify_bundle(copy, keys / "signing.pub")
    doc["schema_version"] = 1
    raw = json.dumps(doc).encode()
    (copy / "manifest.json").write_bytes(raw)
    (copy / "manifest.sig").write_bytes(key.sign(raw))
    (copy / "forest.npz").unlink()
    with pytest.raises(BundleError, match=r"forest\.npz is listed in the manifest but missing"):
        verify_bundle(copy, keys / "signing.pub")


def test_channel_mismatch(bundle: Path, keys: Path) -> None:
    with pytest.raises(BundleError, match="model needs channels"):
        verify_bundle(bundle, keys / "signing.pub", channels=["pressure_bar"])


def test_replay_cli_refuses_a_bad_bundle_with_exit_2(
    copy: Path, keys: Path, sim_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (copy / "manifest.sig").write_bytes(b"\0" * 64)
    out = tmp_path / "scores.csv"
    code = agent_main(
        [
            "replay",
            "--bundle",
            str(copy),
            "--data",
            str(sim_csv),
            "--out",
            str(out),
            "--trust",
            str(keys / "signing.pub"),
        ]
    )
    assert code == 2
    assert "signature does not match" in capsys.readouterr().err
    assert not out.exists()


def test_a_bundle_for_other_window_features_is_refused(copy: Path, keys: Path) -> None:
    """The forest was trained on the trainer's feature kernel of its day: a device computing
    another feature set would feed it numbers it never saw."""
    from edge_agent.detect.windows import FEATURE_SET_VERSION
    from edge_agent.model_slot import load_cascade

    key = load_private_key(keys / "signing.key")
    doc = json.loads((copy / "manifest.json").read_text())
    doc["window"]["feature_set"] = FEATURE_SET_VERSION + 1
    raw = json.dumps(doc).encode()
    (copy / "manifest.json").write_bytes(raw)
    (copy / "manifest.sig").write_bytes(key.sign(raw))
    verified = verify_bundle(copy, keys / "signing.pub")  # signed and complete...
    with pytest.raises(BundleError, match=f"feature set {FEATURE_SET_VERSION + 1}"):
        load_cascade(verified)  # ...but not for this device's kernels


def test_digest_names_the_verified_manifest_bytes(bundle: Path, keys: Path) -> None:
    b = verify_bundle(bundle, keys / "signing.pub")
    assert b.digest == hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert b.path == bundle.resolve()


def test_any_of_several_trusted_keys(bundle: Path, keys: Path, tmp_path: Path) -> None:
    """Key rotation: a gateway trusting the old and the new key takes bundles signed with
    either; one trusting neither names every key it tried."""
    new_key, new_pub = keygen(tmp_path / "new")
    rotated = resigned_copy(bundle, tmp_path / "rotated", new_key)
    both = [keys / "signing.pub", new_pub]
    assert verify_bundle(rotated, both).manifest == verify_bundle(bundle, both).manifest
    _, stranger = keygen(tmp_path / "stranger")
    with pytest.raises(BundleError, match="any of the trusted keys") as err:
        verify_bundle(rotated, [keys / "signing.pub", stranger])
    assert str(keys / "signing.pub") in str(err.value)
    assert str(stranger) in str(err.value)
    with pytest.raises(BundleError, match="no trusted key given"):
        verify_bundle(rotated, [])
    with pytest.raises(BundleError, match="trusted key not found"):
        verify_bundle(rotated, [new_pub, tmp_path / "missing.pub"])


@pytest.mark.parametrize("name", ["forest.npz", "manifest.json", "manifest.sig"])
def test_a_symlink_inside_a_bundle_is_refused(
    copy: Path, keys: Path, tmp_path: Path, name: str
) -> None:
    """Even a link to a file with the right content: a bundle holds its own files."""
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(copy / name, outside / name)
    (copy / name).symlink_to(outside / name)
    with pytest.raises(BundleError, match=f"{name} is a symbolic link"):
        verify_bundle(copy, keys / "signing.pub")


def test_a_link_to_the_bundle_is_followed_once(
    bundle: Path, keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bundles/current`` re-pointed while the bundle is being read: every file still comes
    from the bundle it pointed at when verification began, never a mix of two."""
    old = resigned_copy(bundle, tmp_path / "old", keys / "signing.key")
    forest = (bundle / "forest.npz").read_bytes()
    new = resigned_copy(
        bundle, tmp_path / "new", keys / "signing.key", {"model_version": "new"},
        files={"forest.npz": forest + b"new"},
    )
    current = tmp_path / "current"
    point_link(current, old)
    real_read = verify_module.read_no_follow
    reads: list[str] = []

    def read_then_repoint(directory: Path, name: str) -> bytes:
        data = real_read(directory, name)
        reads.append(name)
        point_link(current, new)  # the deploy script moves the link after the first read
        return data

    monkeypatch.setattr(verify_module, "read_no_follow", read_then_repoint)
    b = verify_bundle(current, keys / "signing.pub")
    assert reads[:2] == ["manifest.json", "manifest.sig"]
    assert set(reads) == {
        "manifest.json", "manifest.sig", "forest.npz", "model_int8.tflite", "train_weights.npz"
    }
    assert b.path == old.resolve()
    assert b.files["forest.npz"] == forest
    assert b.manifest.model_version != "new"
    monkeypatch.undo()
    assert verify_bundle(current, keys / "signing.pub").manifest.model_version == "new"


def test_a_missing_bundle_directory(keys: Path, tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for missing in (tmp_path / "nowhere", tmp_path / "dangling"):
        with pytest.raises(BundleError, match="bundle directory not found"):
            verify_bundle(missing, keys / "signing.pub")


# The parity record of a bundle exported before the sized parity set (its fields, no more).
OLD_PARITY = {
    "windows": 1200,
    "positives": 400,
    "f1_float": 0.0,
    "f1_int8": 0.0,
    "auc_float": 0.97,
    "auc_int8": 0.969,
    "error_rel_mae": 0.03,
    "forced": False,
}


def test_a_bundle_with_the_old_parity_record_still_loads(
    bundle: Path, keys: Path, tmp_path: Path
) -> None:
    from edge_agent.model_slot import load_cascade

    old = resigned_copy(bundle, tmp_path / "old", keys / "signing.key", {"parity": OLD_PARITY})
    verified = verify_bundle(old, keys / "signing.pub")
    parity = verified.manifest.parity
    assert parity.rule == "alert_threshold"
    assert parity.synthetic is None
    assert parity.input_clipped_fraction is None
    assert load_cascade(verified).forest is not None
