"""A throwaway PKI for the TLS tests (the MQTT uplink against Mosquitto, the /metrics server).

``write_pki(directory)`` makes, with ``cryptography``, a test CA, a server certificate for
``localhost`` only, a client certificate from the same CA, and a client certificate from a
rogue CA that nobody trusts, and writes them as PEM files. Tests import it as
``from pki import Pki, write_pki`` (``tests/`` is on sys.path) and build one set per module:
EC keys are cheap, but the certificates never change within a module.

The certificates are shaped as a strict verifier wants them (key usage and a subject key
identifier on the CA, the authority key identifier and the right extended key usage on the
leaves), so a refusal in a test is the one the test means, not a malformed certificate. Keys
are written readable by their owner only, as the agent's secret-file checks require.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_VALID_DAYS = 2
# Valid from a little before now, so that a clock a few seconds behind still accepts them.
BACKDATE = dt.timedelta(minutes=5)
SECRET_MODE = 0o600  # owner read/write only
# The server certificate's only name: connecting by IP address must fail the host name check.
SERVER_NAME = "localhost"

_PEM = serialization.Encoding.PEM
_Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate the server and the trusted client chain to
    server_cert: Path  # for SERVER_NAME only
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from a CA the server does not trust
    rogue_key: Path


def write_secret(path: Path, content: str | bytes, mode: int = SECRET_MODE) -> Path:
    """Write ``content`` to ``path`` and set its permission bits to ``mode`` exactly."""
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    path.chmod(mode)  # after writing: the umask may have narrowed (or the file widened) them
    return path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _sign(
    builder: x509.CertificateBuilder, subject: str, key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        builder.subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CERT_VALID_DAYS))
        .sign(issuer_key, hashes.SHA256())
    )


def _ca(cn: str) -> _Issuer:
    """A self-signed CA that may sign certificates and CRLs, and nothing else."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
        key_encipherment=False, data_encipherment=False, key_agreement=False,
        encipher_only=False, decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return _sign(builder, cn, key, _name(cn), key), key


def _leaf(directory: Path, name: str, ca: _Issuer, *, server: bool) -> tuple[Path, Path]:
    """``name``.crt and ``name``.key in ``directory``: a server certificate for SERVER_NAME
    when ``server``, else a client certificate."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False
        )
    cert = _sign(builder, f"{name}.test", key, ca_cert.subject, ca_key)
    cert_path = directory / f"{name}.crt"
    cert_path.write_bytes(cert.public_bytes(_PEM))
    key_path = write_secret(directory / f"{name}.key", key.private_bytes(
        _PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption(),
    ))
    return cert_path, key_path


def write_pki(directory: Path) -> Pki:
    """The whole set, as PEM files in ``directory`` (which must exist)."""
    ca, rogue_ca = _ca("test CA"), _ca("rogue CA")
    ca_path = directory / "ca.crt"
    ca_path.write_bytes(ca[0].public_bytes(_PEM))
    return Pki(
        ca_path,
        *_leaf(directory, "server", ca, server=True),
        *_leaf(directory, "client", ca, server=False),
        *_leaf(directory, "rogue", rogue_ca, server=False),
    )
