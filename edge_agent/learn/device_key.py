"""The gateway's own Ed25519 key pair: it signs the model deltas the gateway sends upstream.

Pipeline position: fleet learning (issue 11), used by ``edge_agent.learn.delta.encode_delta``.
``systemd/install.sh`` creates ``/etc/edge-agent/device.key`` (0640 root:edge-agent, readable
by the agent, never by other users) and ``device.pub`` once, with
``python -m edge_agent.learn.device_key --out /etc/edge-agent --group edge-agent``; the public
half is registered with the fleet as ``<machine_id>.pub`` in the aggregator's ``--trust-devices``
directory. The files have the formats ``python -m export keygen`` writes (PKCS#8 PEM private
key, SubjectPublicKeyInfo PEM public key), and ``export.keys`` writes and reads its signing
keys through :func:`write_key_pair` and :func:`read_private_key`, so the two cannot drift.
"""

from __future__ import annotations

import argparse
import grp
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.config.secrets import check_secret_file
from edge_agent.errors import EdgeAnomalyError
from edge_agent.fsutil import atomic_write, fsync_dir

PRIVATE_MODE = 0o600  # owner only; --group makes it 0640 for the agent's group
GROUP_MODE = 0o640
PUBLIC_MODE = 0o644
PRIVATE_NAME = "device.key"
PUBLIC_NAME = "device.pub"
DEFAULT_DIR = Path("/etc/edge-agent")
MAKE_HINT = "make one with `python -m edge_agent.learn.device_key`"


class KeyFileError(EdgeAnomalyError):
    """A key file is missing, unreadable, not an unencrypted PEM key, or not Ed25519."""


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_key_pair(
    private_path: Path,
    public_path: Path,
    *,
    mode: int = PRIVATE_MODE,
    gid: int | None = None,
    what: str = "key",
) -> Ed25519PrivateKey:
    """Create a new key pair; never overwrites an existing key (:class:`KeyFileError`)."""
    for p in (private_path, public_path):
        if p.exists():
            raise KeyFileError(f"{p} already exists; refusing to overwrite a {what}")
    key = Ed25519PrivateKey.generate()
    secret = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created with its final mode (and group) so the secret is never readable by others.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & PRIVATE_MODE)
    with os.fdopen(fd, "wb") as fh:
        if gid is not None:
            os.fchown(fh.fileno(), -1, gid)
        os.fchmod(fh.fileno(), mode)
        fh.write(secret)
        fh.flush()
        os.fsync(fh.fileno())
    atomic_write(public_path, public_pem(key), mode=PUBLIC_MODE)
    fsync_dir(private_path.parent)
    return key


def read_private_key(path: Path, *, what: str = "private key", hint: str = MAKE_HINT) -> (
    Ed25519PrivateKey
):
    """The Ed25519 private key in PEM file ``path``; ``what`` and ``hint`` word the errors."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: {what} not found ({hint})") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: {what} is not Ed25519")
    return key


def load_device_key(path: Path, config_key: str = "device_key") -> Ed25519PrivateKey:
    """The gateway's signing key, refused (``ConfigError``) if other users can read it."""
    check_secret_file(path, config_key)
    return read_private_key(path, what="device key")


def _group_id(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise KeyFileError(f"--group {group}: no such group") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge_agent.learn.device_key",
        description="Create this gateway's delta signing key pair if it does not exist yet.",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_DIR,
        help=f"directory for {PRIVATE_NAME} and {PUBLIC_NAME} (default %(default)s)",
    )
    parser.add_argument("--group", help="group (name or number) that may read the private key "
                        "(mode 0640); without it the key is 0600")
    args = parser.parse_args(argv)
    private_path, public_path = args.out / PRIVATE_NAME, args.out / PUBLIC_NAME
    try:
        if private_path.exists():
            key = read_private_key(private_path, what="device key")
            print(f"{private_path} kept")
            if not public_path.exists():
                atomic_write(public_path, public_pem(key), mode=PUBLIC_MODE)
        else:
            gid = None if args.group is None else _group_id(args.group)
            key = write_key_pair(private_path, public_path,
                                 mode=PRIVATE_MODE if gid is None else GROUP_MODE, gid=gid)
            print(f"{private_path} created")
    except (KeyFileError, OSError) as exc:
        print(f"device_key: error: {exc}", file=sys.stderr)
        return 2
    print(f"register {public_path} with the fleet as <machine_id>.pub:")
    print(public_pem(key).decode("ascii"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
