"""Signed variants of the session's bundle, for tests that need a second model or a bundle
signed with another key: a copy whose manifest is edited and signed again, as ``export``
would sign it (Ed25519 over the exact manifest bytes)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from export.keys import load_private_key


def resigned_copy(
    bundle: Path,
    dst: Path,
    signing_key: Path,
    changes: dict[str, Any] | None = None,
    *,
    files: dict[str, bytes] | None = None,
) -> Path:
    """Copy ``bundle`` to ``dst``, set each dotted ``changes`` key in its manifest, replace
    the bundle ``files`` given (their SHA-256 updated in the manifest), and sign it with
    ``signing_key``."""
    shutil.copytree(bundle, dst)
    doc = json.loads((dst / "manifest.json").read_text())
    for dotted, value in (changes or {}).items():
        node = doc
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    for name, data in (files or {}).items():
        (dst / name).write_bytes(data)
        doc["files"][name] = hashlib.sha256(data).hexdigest()
    raw = json.dumps(doc, indent=2).encode()
    (dst / "manifest.json").write_bytes(raw)
    (dst / "manifest.sig").write_bytes(load_private_key(signing_key).sign(raw))
    return dst


def point_link(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target`` in one atomic rename, as a deploy script
    swaps ``bundles/current``."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)
