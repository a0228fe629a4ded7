"""Chunks of one deployment as they arrive, kept on disk so a download resumes where it stopped.

Sits between the downlink (retained chunk messages, ``edge_agent.ota.protocol``) and the slot
assembly (``edge_agent.ota.assemble``). Each chunk is checked against its SHA-256 in the
signed deployment before it is written, and written as one file (``<file sha256>.<index>``,
an atomic rename), so a chunk on disk is whole. Chunks are not fsynced one by one (an SD card
would pay for every 64 KiB): after a power cut :meth:`Staging.scan` hashes what is there and
drops any chunk the cut damaged, and the retained message brings it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from edge_agent.fsutil import atomic_write
from edge_agent.ota.protocol import Deployment, DeploymentError, sha256_hex

CHUNK_MODE = 0o600


class Staging:
    """The staging directory of one deployment: which chunks are held, which are missing."""

    def __init__(self, root: Path, deployment: Deployment) -> None:
        self.dir = root / deployment.deployment_id
        self.deployment = deployment
        # Expected hash of every chunk, by (file sha256, index); files with equal content
        # share their chunks.
        self._expected: dict[tuple[str, int], str] = {}
        self._names: dict[str, str] = {}  # file sha256 -> a file name, for messages
        for name, f in deployment.files.items():
            self._names.setdefault(f.sha256, name)
            for i, h in enumerate(f.chunks):
                self._expected[(f.sha256, i)] = h
        self._count = {f.sha256: len(f.chunks) for f in deployment.files.values()}
        self._size = {f.sha256: f.size for f in deployment.files.values()}
        self.held: set[tuple[str, int]] = set()

    def open(self) -> None:
        """Create the directory and take stock of what an earlier run left (damaged chunks
        are deleted)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.held = set(self.scan())
        # An empty file has no chunk on the broker (an empty retained payload deletes one).
        self.held |= {(sha, 0) for sha, size in self._size.items() if size == 0}

    def scan(self) -> Iterator[tuple[str, int]]:
        for p in self.dir.iterdir():
            key = _parse_name(p.name)
            if key is None or key not in self._expected:
                _unlink(p)  # a temporary file of a write cut short, or a stranger
                continue
            try:
                ok = sha256_hex(p.read_bytes()) == self._expected[key]
            except OSError:
                ok = False
            if ok:
                yield key
            else:
                _unlink(p)

    def wants(self, sha: str, index: int) -> bool:
        return (sha, index) in self._expected and (sha, index) not in self.held

    def put(self, sha: str, index: int, payload: bytes) -> None:
        """Check chunk ``index`` of file ``sha`` against the deployment and keep it.

        Raises :class:`DeploymentError` for a chunk that does not match its hash and
        ``OSError`` when the disk refuses it."""
        expected = self._expected.get((sha, index))
        if expected is None:
            return
        if sha256_hex(payload) != expected:
            raise DeploymentError(
                f"chunk {index} of {self._names[sha]} does not match its SHA-256 in the "
                "signed deployment: tampered or corrupted on the way"
            )
        atomic_write(self.dir / f"{sha}.{index}", payload, mode=CHUNK_MODE, durable=False)
        self.held.add((sha, index))

    def missing_files(self, skip: set[str]) -> list[str]:
        """SHA-256 of every file with chunks still missing (``skip``: available locally)."""
        return sorted(
            sha for sha, n in self._count.items()
            if sha not in skip and any((sha, i) not in self.held for i in range(n))
        )

    def held_bytes(self, skip: set[str]) -> int:
        """Bytes of the distinct files available: chunks held plus files held locally."""
        step = self.deployment.chunk_bytes
        total = 0
        for sha, size in self._size.items():
            if sha in skip:
                total += size
                continue
            total += sum(
                _chunk_size(size, step, i) for i in range(self._count[sha])
                if (sha, i) in self.held
            )
        return total

    @property
    def total_bytes(self) -> int:
        """Bytes of the distinct files (what a download from nothing moves)."""
        return sum(self._size.values())

    def complete(self, skip: set[str]) -> bool:
        return not self.missing_files(skip)

    def read_file(self, sha: str) -> Iterator[bytes]:
        """The chunks of file ``sha`` in order, each checked again (a disk can rot)."""
        if self._size[sha] == 0:
            return
        for i in range(self._count[sha]):
            data = (self.dir / f"{sha}.{i}").read_bytes()
            if sha256_hex(data) != self._expected[(sha, i)]:
                self.held.discard((sha, i))
                _unlink(self.dir / f"{sha}.{i}")
                raise DeploymentError(
                    f"staged chunk {i} of {self._names[sha]} changed on disk since it arrived"
                )
            yield data

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.held.clear()


def remove_others(root: Path, keep: str | None) -> None:
    """Delete every staging directory except ``keep``: one download at a time on disk."""
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name != keep:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else _unlink(p)


def _chunk_size(size: int, chunk_bytes: int, index: int) -> int:
    return max(0, min(chunk_bytes, size - index * chunk_bytes))


def _parse_name(name: str) -> tuple[str, int] | None:
    sha, dot, idx = name.partition(".")
    if not dot or not idx.isdigit() or len(sha) != hashlib.sha256().digest_size * 2:
        return None
    return sha, int(idx)


def _unlink(p: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(p)
