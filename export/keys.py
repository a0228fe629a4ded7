"""Ed25519 signing keys for bundles: made once per fleet, the public half flashed on gateways.

The private key never leaves the desk (mode 0600); gateways trust the public key named in
their config, and refuse any bundle it did not sign.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# The key file formats are shared with the gateway's own delta-signing key.
from edge_agent.learn.device_key import KeyFileError, read_private_key, write_key_pair
from export.errors import ExportError

PRIVATE_NAME = "signing.key"
PUBLIC_NAME = "signing.pub"
PRIVATE_MODE = 0o600


def keygen(out_dir: Path) -> tuple[Path, Path]:
    """Write a new key pair into ``out_dir``; never overwrites an existing key."""
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / PRIVATE_NAME, out_dir / PUBLIC_NAME
    try:
        write_key_pair(priv_path, pub_path, mode=PRIVATE_MODE, what="signing key")
    except KeyFileError as exc:
        raise ExportError(str(exc)) from None
    return priv_path, pub_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        return read_private_key(path, what="signing key", hint="make one with `export keygen`")
    except KeyFileError as exc:
        raise ExportError(str(exc)) from None
