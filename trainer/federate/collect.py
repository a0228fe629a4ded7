"""Where a round's deltas come from and who may send them: delta sources and device keys.

Position: the input side of ``trainer federate``. A ``DeltaSource`` is a named way to read one
delta message (a file given with ``--deltas``, or a message spooled from the broker); reading
it again must give the same bytes, because the round reads every delta twice when clipping to a
multiple of the median norm (once for the norms, once to aggregate), so no update is held in
memory. Device keys come from ``KEYDIR/*.pub``: the file stem is the machine id, the content a
PEM Ed25519 public key (``export keygen``'s ``signing.pub`` format, as the gateway installer
writes ``device.pub``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.bundle.verify import load_public_key
from edge_agent.errors import EdgeAnomalyError
from edge_agent.learn.delta import MACHINE_ID_PATTERN, MAX_MACHINE_ID_BYTES
from export.errors import ExportError

KEY_SUFFIX = ".pub"


@dataclass(frozen=True)
class DeltaSource:
    """One delta message: ``name`` for the record, ``read`` for its bytes (OSError if gone)."""

    name: str
    read: Callable[[], bytes]


def file_sources(paths: Iterable[Path]) -> list[DeltaSource]:
    """One source per delta file; a missing file is refused at reading, not here."""
    return [DeltaSource(str(p), p.read_bytes) for p in paths]


def load_device_keys(key_dir: Path) -> dict[str, Ed25519PublicKey]:
    """Machine id → public key, from ``key_dir/*.pub``; ExportError (an operator error) when
    the directory is missing, holds no key, or a key file is not a usable key."""
    if not key_dir.is_dir():
        raise ExportError(f"{key_dir}: device key directory not found")
    keys: dict[str, Ed25519PublicKey] = {}
    problems: list[str] = []
    for path in sorted(key_dir.glob(f"*{KEY_SUFFIX}")):
        machine = path.stem
        if len(machine) > MAX_MACHINE_ID_BYTES or not re.match(MACHINE_ID_PATTERN, machine):
            problems.append(f"{path}: file name {machine!r} is not a machine id")
            continue
        try:
            keys[machine] = load_public_key(path)
        except EdgeAnomalyError as exc:
            problems.append(str(exc))
    if problems:
        raise ExportError("device keys: " + "; ".join(problems))
    if not keys:
        raise ExportError(f"{key_dir}: no device keys (*{KEY_SUFFIX}, one per gateway)")
    return keys
