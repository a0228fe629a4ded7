"""The gateway's delta-signing key (edge_agent.learn.device_key), and that it matches ``export
keygen``'s format both ways."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.bundle.verify import load_public_key
from edge_agent.errors import ConfigError
from edge_agent.learn.device_key import (
    GROUP_MODE,
    PRIVATE_MODE,
    KeyFileError,
    load_device_key,
    main,
    read_private_key,
    write_key_pair,
)
from export.errors import ExportError
from export.keys import keygen, load_private_key

MESSAGE = b"a delta"


def test_created_once_owner_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    key_path, pub_path = tmp_path / "device.key", tmp_path / "device.pub"
    assert stat.S_IMODE(key_path.stat().st_mode) == PRIVATE_MODE
    out = capsys.readouterr().out
    assert "created" in out
    assert pub_path.read_text() in out  # shown for registration
    before = key_path.read_bytes()

    assert main(["--out", str(tmp_path)]) == 0  # again: kept, never replaced
    assert "kept" in capsys.readouterr().out
    assert key_path.read_bytes() == before

    pub_path.unlink()  # a cut between the two files: the public half is made again
    assert main(["--out", str(tmp_path)]) == 0
    key = load_device_key(key_path)
    load_public_key(pub_path).verify(key.sign(MESSAGE), MESSAGE)


def test_group_readable_for_the_agent(tmp_path: Path) -> None:
    gid = os.getgid()
    assert main(["--out", str(tmp_path), "--group", str(gid)]) == 0
    st = (tmp_path / "device.key").stat()
    assert stat.S_IMODE(st.st_mode) == GROUP_MODE
    assert st.st_gid == gid
    load_device_key(tmp_path / "device.key")  # our own group may read it
    assert main(["--out", str(tmp_path / "x"), "--group", "no-such-group-here"]) == 2


def test_world_readable_key_is_refused(tmp_path: Path) -> None:
    write_key_pair(tmp_path / "device.key", tmp_path / "device.pub")
    (tmp_path / "device.key").chmod(0o644)
    with pytest.raises(ConfigError, match="readable or writable by every user"):
        load_device_key(tmp_path / "device.key", "learn.device_key")


def test_formats_shared_with_export_keygen(tmp_path: Path) -> None:
    priv, pub = keygen(tmp_path / "desk")
    desk_key = read_private_key(priv)  # export keygen's file, read by the gateway's reader
    load_public_key(pub).verify(desk_key.sign(MESSAGE), MESSAGE)
    write_key_pair(tmp_path / "device.key", tmp_path / "device.pub")
    device = load_private_key(tmp_path / "device.key")  # and the other way
    load_public_key(tmp_path / "device.pub").verify(device.sign(MESSAGE), MESSAGE)


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="device key not found"):
        read_private_key(tmp_path / "missing.key", what="device key")
    with pytest.raises(ExportError, match=r"signing key not found .*export keygen"):
        load_private_key(tmp_path / "missing.key")
    junk = tmp_path / "junk.key"
    junk.write_text("not a key\n")
    with pytest.raises(KeyFileError, match=r"junk\.key: not an unencrypted PEM private key"):
        read_private_key(junk)
    keygen(tmp_path / "k")
    with pytest.raises(ExportError, match="refusing to overwrite a signing key"):
        keygen(tmp_path / "k")
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_key_pair(tmp_path / "k" / "signing.key", tmp_path / "k" / "other.pub")


def test_runs_as_a_module(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "edge_agent.learn.device_key", "--out", str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "BEGIN PUBLIC KEY" in res.stdout
