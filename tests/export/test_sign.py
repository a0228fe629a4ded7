"""``export sign``: re-signing a real int8 bundle after a hand edit, as a gateway then sees it.

Every case works on a copy of the session's signed bundle and checks the result with
``verify_bundle``, the gateway's own gate.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.bundle.verify import verify_bundle
from edge_agent.errors import BundleError
from export.cli import main as export_main
from export.errors import ExportError
from export.sign import next_release_stamp, parse_stamp, sign_manifest

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 120


@pytest.fixture
def copy(bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(bundle, out)
    return out


def edit_manifest(bundle_dir: Path, change: dict[str, object]) -> None:
    path = bundle_dir / "manifest.json"
    doc = json.loads(path.read_text())
    for dotted, value in change.items():
        *parents, last = dotted.split(".")
        node = doc
        for p in parents:
            node = node[p]
        node[last] = value
    path.write_text(json.dumps(doc, indent=2) + "\n")


def test_sign_after_a_manifest_edit_verifies(copy: Path, keys: Path) -> None:
    old = verify_bundle(copy, keys / "signing.pub").manifest
    new_threshold = old.threshold.alert_threshold * 2
    edit_manifest(copy, {"threshold.alert_threshold": new_threshold})
    with pytest.raises(BundleError, match="signature does not match"):
        verify_bundle(copy, keys / "signing.pub")

    signed = sign_manifest(copy, keys / "signing.key")
    verified = verify_bundle(copy, keys / "signing.pub")
    assert verified.manifest == signed
    assert verified.manifest.threshold.alert_threshold == new_threshold
    # Not a new release unless asked: the release order is unchanged.
    assert verified.manifest.created_at == old.created_at
    assert verified.manifest.model_version == old.model_version


def test_a_changed_file_is_refused_until_signed_again(copy: Path, keys: Path) -> None:
    forest = verify_bundle(copy, keys / "signing.pub").manifest.forest.file
    with (copy / forest).open("ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=f"{forest} does not match its SHA-256"):
        verify_bundle(copy, keys / "signing.pub")

    sign_manifest(copy, keys / "signing.key")
    # The gateway now accepts the file's new contents: the signature vouches for them.
    verified = verify_bundle(copy, keys / "signing.pub")
    assert verified.files[forest].endswith(b"\0")


def test_new_release_is_strictly_later_even_within_the_same_second(copy: Path, keys: Path) -> None:
    first = verify_bundle(copy, keys / "signing.pub").manifest
    stamps = [first.created_at]
    for version in ("v2", "v3"):
        m = sign_manifest(copy, keys / "signing.key", new_release=True, model_version=version)
        assert m.model_version == version
        stamps.append(m.created_at)
    times = [parse_stamp(s) for s in stamps]
    assert all(t is not None for t in times)
    assert times[0] < times[1] < times[2]  # type: ignore[operator]
    assert verify_bundle(copy, keys / "signing.pub").manifest.created_at == stamps[-1]


def test_release_stamp_rules() -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, 600_000, tzinfo=dt.UTC)
    assert next_release_stamp("2026-01-01T00:00:00Z", now) == "2026-01-02T03:04:05Z"
    # Same second, or the old release in the future (a clock step): one second after it.
    assert next_release_stamp("2026-01-02T03:04:05Z", now) == "2026-01-02T03:04:06Z"
    assert next_release_stamp("2027-06-01T00:00:00+00:00", now) == "2027-06-01T00:00:01Z"
    assert next_release_stamp("", now) == "2026-01-02T03:04:05Z"


def test_a_manifest_that_no_longer_validates_is_named(copy: Path, keys: Path) -> None:
    edit_manifest(copy, {"window.length": "long", "sampling.period": 1.0})
    with pytest.raises(ExportError) as err:
        sign_manifest(copy, keys / "signing.key")
    text = str(err.value)
    assert str(copy / "manifest.json") in text
    assert "window.length: Input should be a valid integer" in text
    assert "(got 'long')" in text
    assert "sampling.period: Extra inputs are not permitted" in text
    # Nothing was signed: the bundle stays refused rather than signed-but-broken.
    with pytest.raises(BundleError):
        verify_bundle(copy, keys / "signing.pub")


def test_a_listed_file_missing_or_a_link_is_refused(copy: Path, keys: Path) -> None:
    forest = verify_bundle(copy, keys / "signing.pub").manifest.forest.file
    (copy / forest).unlink()
    with pytest.raises(
        ExportError, match=f"{forest} is listed in the manifest's files but missing"
    ):
        sign_manifest(copy, keys / "signing.key")
    (copy / forest).symlink_to(copy / "manifest.json")
    with pytest.raises(ExportError, match=f"{forest} is not a plain file"):
        sign_manifest(copy, keys / "signing.key")


def test_a_file_used_but_not_listed_is_refused(copy: Path, keys: Path) -> None:
    doc = json.loads((copy / "manifest.json").read_text())
    forest = doc["forest"]["file"]
    del doc["files"][forest]
    (copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ExportError, match=f"{forest} is used by the model but not listed"):
        sign_manifest(copy, keys / "signing.key")


def test_unlisted_files_are_left_alone(copy: Path, keys: Path) -> None:
    (copy / "NOTES.txt").write_text("threshold doubled by hand\n")
    signed = sign_manifest(copy, keys / "signing.key")
    assert "NOTES.txt" not in signed.files
    verify_bundle(copy, keys / "signing.pub")


def test_cli_signs_and_reports(copy: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_manifest(copy, {"alerts.open_after": 5})
    args = ["sign", "--bundle", str(copy), "--key", str(keys / "signing.key")]
    assert export_main([*args, "--new-release", "--model-version", "hand-1"]) == 0
    out = capsys.readouterr().out
    assert f"signed {copy}: model_version hand-1" in out
    assert verify_bundle(copy, keys / "signing.pub").manifest.alerts.open_after == 5
    assert "manifest sha256 " in out

    (copy / "manifest.json").write_text("{not json")
    assert export_main(args) == 2
    assert f"error: {copy / 'manifest.json'}: not JSON" in capsys.readouterr().err
    assert export_main(["sign", "--bundle", str(copy), "--key", str(copy / "nokey")]) == 2
    assert "signing key not found" in capsys.readouterr().err


def test_sign_needs_no_tensorflow(copy: Path, keys: Path) -> None:
    """A fresh process with the desk's heavy stacks made unimportable still signs."""
    probe = (
        "import sys\n"
        "for name in ('tensorflow', 'keras', 'sklearn', 'scipy', 'pandas', 'matplotlib'):\n"
        "    sys.modules[name] = None\n"
        "from export.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    key_args = ["--key", str(keys / "signing.key"), "--new-release"]
    proc = subprocess.run(
        [sys.executable, "-c", probe, "sign", "--bundle", str(copy), *key_args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "signed " in proc.stdout
    verify_bundle(copy, keys / "signing.pub")
