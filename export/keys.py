"""Ed25519 signing keys for bundles: made once per fleet, the public half flashed on gateways.

The private key never leaves the desk (mode 0600); gateways trust the public key named in
their config, and refuse any bundle it did not sign.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from export.errors import ExportError

PRIVATE_NAME = "signing.key"
PUBLIC_NAME = "signing.pub"
PRIVATE_MODE = 0o600


def keygen(out_dir: Path) -> tuple[Path, Path]:
    """Write a new key pair into ``out_dir``; never overwrites an existing key."""
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / PRIVATE_NAME, out_dir / PUBLIC_NAME
    for p in (priv_path, pub_path):
        if p.exists():
            raise ExportError(f"{p} already exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Created with its final mode so the secret is never readable by others, even briefly.
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(priv)
    pub_path.write_bytes(pub)
    return priv_path, pub_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ExportError(
            f"{path}: signing key not found (make one with `export keygen`)"
        ) from None
    except (ValueError, TypeError) as exc:
        raise ExportError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ExportError(f"{path}: signing key is not Ed25519")
    return key
