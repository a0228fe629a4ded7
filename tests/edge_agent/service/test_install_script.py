"""systemd/install.sh: its help, its dry run, and a real run into a fake root (``--root``).

The real run uses the real ``systemd-sysusers`` and ``systemctl --root`` against a scratch
directory. Only the Python interpreter is a stand-in: building the venv for real would download
Numba and friends, which a test cannot. The stand-in records how it was called, so the test
checks the exact pip and validate commands the script issues.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "systemd" / "install.sh"
UNIT = ROOT / "systemd" / "edge-agent.service"
SCRIPT_TIMEOUT_S = 60

needs_systemd_tools = pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemctl") is None,
    reason="systemd-sysusers/systemctl not installed (apt-get install systemd)",
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the real install sets root ownership")

# `python3 -m venv DIR` makes DIR/bin/python, which logs each call and claims a 'validate'
# subcommand; everything else succeeds. Both log to files next to them.
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/python3.log"
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    shift 2
    [ "$1" = "--clear" ] && shift
    mkdir -p "$1/bin"
    cat > "$1/bin/python" <<'EOS'
#!/bin/sh
echo "$*" >> "$(dirname "$0")/../calls.log"
[ "$1 $2 $3" = "-m edge_agent --help" ] && echo "{run,validate,events,version}"
exit 0
EOS
    chmod +x "$1/bin/python"
fi
exit 0
"""


def sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "python3"
    path.parent.mkdir()
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text('machine_id = "pump1"\n')
    return path


def test_syntax() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=SCRIPT_TIMEOUT_S)


def test_shellcheck() -> None:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    res = subprocess.run([exe, str(SCRIPT)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout


def test_help_names_every_step() -> None:
    res = sh("--help")
    assert res.returncode == 0, res.stderr
    for word in (
        "edge-agent",
        "dialout",
        "/opt/edge-agent/venv",
        "[edge]",
        "/etc/edge-agent/agent.toml",
        "0640",
        "--force",
        "daemon-reload",
        "--no-start",
        "--dry-run",
        "--root",
    ):
        assert word in res.stdout, word


def test_unknown_option_fails() -> None:
    res = sh("--frobnicate")
    assert res.returncode == 1
    assert "unknown argument: --frobnicate" in res.stderr


@needs_systemd_tools
def test_dry_run_changes_nothing(tmp_path: Path, config: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    res = sh("--dry-run", "--root", str(root), "--config", str(config), "--python", sys.executable)
    assert res.returncode == 0, res.stderr
    assert list(root.iterdir()) == []
    assert "dry run: nothing was changed" in res.stdout


@needs_systemd_tools
def test_dry_run_on_the_host_shows_systemctl(config: Path) -> None:
    existing = Path("/etc/edge-agent/agent.toml")
    if existing.exists() and existing.read_text() != config.read_text():
        pytest.skip("this host has its own /etc/edge-agent/agent.toml")
    res = sh("--dry-run", "--config", str(config), "--python", sys.executable)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "systemd-sysusers edge-agent.conf" in out
    assert f"-m pip install --disable-pip-version-check --upgrade {ROOT}\\[edge\\]" in out
    assert "-m 0640 -o root -g edge-agent" in out
    for cmd in ("daemon-reload", "enable edge-agent.service", "restart edge-agent.service"):
        assert f"systemctl {cmd}" in out
    assert "journalctl -u edge-agent -f" in out
    assert "python -m edge_agent events --config /etc/edge-agent/agent.toml" in out


@needs_systemd_tools
def test_refuses_python_older_than_311(tmp_path: Path, config: Path) -> None:
    old = tmp_path / "python3.9"
    old.write_text("#!/bin/sh\nexit 1\n")  # fails the version check like a real 3.9
    old.chmod(0o755)
    res = sh("--dry-run", "--config", str(config), "--python", str(old))
    assert res.returncode == 1
    assert "older than 3.11" in res.stderr


@needs_systemd_tools
def test_refuses_a_source_that_is_no_project(tmp_path: Path, config: Path) -> None:
    res = sh("--dry-run", "--config", str(config), "--source", str(tmp_path))
    assert res.returncode == 1
    assert "has no pyproject.toml" in res.stderr
    res = sh("--dry-run", "--config", str(config), "--source", str(config))
    assert res.returncode == 1
    assert "neither a project directory nor a .whl" in res.stderr


def _install(root: Path, fake_python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return sh("--root", str(root), "--python", str(fake_python), *args)


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes | str]]:
    out: dict[str, tuple[int, int, int, bytes | str]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        body: bytes | str = (
            os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else b""
        )
        out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, body)
    return out


@needs_systemd_tools
@needs_root
def test_install_into_fake_root(tmp_path: Path, fake_python: Path, config: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    res = _install(root, fake_python, "--config", str(config))
    assert res.returncode == 0, res.stdout + res.stderr

    passwd = (root / "etc/passwd").read_text().splitlines()
    user = next(ln.split(":") for ln in passwd if ln.startswith("edge-agent:"))
    assert user[5] == "/var/lib/edge-agent"
    assert user[6].endswith("nologin")
    groups = {ln.split(":")[0]: ln.split(":") for ln in (root / "etc/group").read_text().split()}
    assert "edge-agent" in groups["dialout"][3].split(",")
    gid = int(groups["edge-agent"][2])

    conf = root / "etc/edge-agent/agent.toml"
    st = conf.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == (0, gid)
    assert conf.read_text() == config.read_text()

    unit = root / "etc/systemd/system/edge-agent.service"
    assert unit.read_text() == UNIT.read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/edge-agent.service"
    assert wants.is_symlink()
    assert (root / "etc/modules-load.d/edge-agent.conf").read_text().split()[-2:] == [
        "usbserial",
        "cdc_acm",
    ]

    # The venv sits where the unit's ExecStart= looks for it.
    venv_python = root / "opt/edge-agent/venv/bin/python"
    assert venv_python.exists()
    assert f"ExecStart=/{venv_python.relative_to(root)} " in UNIT.read_text()
    calls = (root / "opt/edge-agent/venv/calls.log").read_text().splitlines()
    assert f"-m pip install --disable-pip-version-check --upgrade {ROOT}[edge]" in calls
    assert f"-m edge_agent validate --config {config}" in calls
    assert "-m edge_agent.kernels.install --build" in calls  # compiled kernels, no numba
    # The delta-signing key is made by the agent's own module, readable by its group.
    assert f"-m edge_agent.learn.device_key --out {root}/etc/edge-agent --group {gid}" in calls

    # Idempotent: a second run changes no file and does not rebuild the venv.
    before = _snapshot(root)
    again = _install(root, fake_python, "--config", str(config))
    assert again.returncode == 0, again.stdout + again.stderr
    after = _snapshot(root)
    log = "opt/edge-agent/venv/calls.log"
    assert {k: v for k, v in after.items() if k != log} == {
        k: v for k, v in before.items() if k != log
    }
    venv_made = (fake_python.parent / "python3.log").read_text().count("-m venv")
    assert venv_made == 1


@needs_systemd_tools
@needs_root
def test_existing_config_needs_force(tmp_path: Path, fake_python: Path, config: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert _install(root, fake_python, "--config", str(config)).returncode == 0
    installed = root / "etc/edge-agent/agent.toml"
    other = tmp_path / "other.toml"
    other.write_text('machine_id = "pump2"\n')

    res = _install(root, fake_python, "--config", str(other))
    assert res.returncode == 1
    assert "--force" in res.stderr
    assert installed.read_text() == config.read_text()

    # Without --config the installed one is kept (and validated).
    assert _install(root, fake_python).returncode == 0
    assert installed.read_text() == config.read_text()

    res = _install(root, fake_python, "--config", str(other), "--force")
    assert res.returncode == 0, res.stdout + res.stderr
    assert installed.read_text() == other.read_text()
    assert stat.S_IMODE(installed.stat().st_mode) == 0o640


@needs_systemd_tools
@needs_root
def test_existing_device_key_is_kept(tmp_path: Path, fake_python: Path, config: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/edge-agent").mkdir(parents=True)
    key = root / "etc/edge-agent/device.key"
    key.write_bytes(b"the gateway's key\n")
    key.chmod(0o600)
    res = _install(root, fake_python, "--config", str(config))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{key} kept" in res.stdout
    assert key.read_bytes() == b"the gateway's key\n"
    st = key.stat()
    gid = int(next(ln.split(":")[2] for ln in (root / "etc/group").read_text().split()
                   if ln.startswith("edge-agent:")))
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, gid)
    calls = (root / "opt/edge-agent/venv/calls.log").read_text()
    assert "edge_agent.learn.device_key" not in calls
