"""Staging and assembly on real bundles: chunks checked as they come, a restart resumes from
what is on disk (a chunk a cut damaged is dropped), a tampered chunk is caught by name, files
a bundle on the gateway already holds are never downloaded, and the slot comes out whole."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from disk import fill
from ota_desk import PREFIX, deployment, variant

from edge_agent.bundle.verify import verify_bundle
from edge_agent.ota.assemble import LocalFiles, assemble
from edge_agent.ota.download import WINDOW_CHUNKS, Download
from edge_agent.ota.pointer import OtaPaths
from edge_agent.ota.protocol import DeploymentError, parse_chunk_topic
from edge_agent.ota.staging import Staging
from export.keys import load_private_key

SMALL_CHUNK = 16 * 1024  # more chunks per file than the download window


def chunks_by_key(chunks: dict[str, bytes]) -> dict[tuple[str, int], bytes]:
    out = {}
    for topic, payload in chunks.items():
        key = parse_chunk_topic(PREFIX, topic)
        assert key is not None
        out[key] = payload
    return out


def test_a_restart_resumes_from_the_chunks_on_disk(
    tmp_path: Path, variants: dict[str, Path], keys: Path
) -> None:
    dep, chunks = deployment(variants["newer"], load_private_key(keys / "signing.key"),
                             chunk_bytes=SMALL_CHUNK)
    by_key = chunks_by_key(chunks)
    staging = Staging(tmp_path, dep)
    staging.open()
    half = sorted(by_key)[: len(by_key) // 2]
    for sha, i in half:
        staging.put(sha, i, by_key[(sha, i)])
    first, second = sorted(staging.held)[:2]
    (staging.dir / f"{first[0]}.{first[1]}").write_bytes(b"cut short")  # a power cut's damage
    (staging.dir / ".x.tmp").write_bytes(b"a temporary file left behind")

    again = Staging(tmp_path, dep)  # the agent restarted
    again.open()
    assert again.held == set(half) - {first}
    assert second in again.held
    assert sorted(p.name for p in again.dir.iterdir()) == sorted(
        f"{s}.{i}" for s, i in again.held
    )
    assert not again.complete(set())


def test_a_tampered_chunk_is_refused_as_it_arrives(
    tmp_path: Path, bundle: Path, keys: Path
) -> None:
    dep, chunks = deployment(bundle, load_private_key(keys / "signing.key"))
    staging = Staging(tmp_path, dep)
    staging.open()
    forest = dep.files["forest.npz"]
    payload = bytearray(chunks_by_key(chunks)[(forest.sha256, 1)])
    payload[10] ^= 0xFF
    with pytest.raises(DeploymentError, match=r"chunk 1 of forest\.npz does not match its SHA-256"):
        staging.put(forest.sha256, 1, bytes(payload))
    assert not staging.held


def test_the_download_asks_only_for_what_is_missing_a_window_at_a_time(
    tmp_path: Path, bundle: Path, variants: dict[str, Path], keys: Path
) -> None:
    dep, chunks = deployment(variants["alerting"], load_private_key(keys / "signing.key"),
                             chunk_bytes=SMALL_CHUNK)
    paths = OtaPaths.under(tmp_path)
    paths.make()
    staging = Staging(paths.staging, dep)
    staging.open()
    # The running bundle holds the same forest and model files: only the manifest is new.
    job = Download(dep, staging, LocalFiles([bundle]), "a", PREFIX)
    asked = job.to_ask()
    wanted = {dep.files["manifest.json"].sha256, dep.files["manifest.sig"].sha256}
    assert asked
    assert all(parse_chunk_topic(PREFIX, t)[0] in wanted for t in asked)
    assert len(asked) <= WINDOW_CHUNKS
    by_key = chunks_by_key(chunks)
    while not job.complete:
        for topic in asked:
            key = parse_chunk_topic(PREFIX, topic)
            assert key is not None
            assert job.got(*key) == topic
            staging.put(*key, by_key[key])
        asked = job.to_ask()
    slot = assemble(paths, "a", staging, job.local)
    assert slot == paths.slot("a")
    assert not (paths.slots / "a.new").exists()
    v = verify_bundle(slot, keys / "signing.pub")
    assert v.digest == dep.manifest_sha256
    assert v.manifest.model_version == "v-alerting"


def test_a_full_disk_refuses_chunks_and_the_half_built_slot(
    small_disk: Path, bundle: Path, keys: Path
) -> None:
    dep, chunks = deployment(bundle, load_private_key(keys / "signing.key"))
    by_key = chunks_by_key(chunks)
    paths = OtaPaths.under(small_disk)
    paths.make()
    staging = Staging(paths.staging, dep)
    staging.open()
    for (sha, i), payload in by_key.items():
        staging.put(sha, i, payload)
    filler = fill(small_disk)
    with pytest.raises(OSError, match="No space left") as err:
        assemble(paths, "b", staging, LocalFiles([]))
    assert err.value.errno == errno.ENOSPC
    assert not (paths.slots / "b.new").exists()
    assert not paths.slot("b").exists()
    staging.remove()
    os.unlink(filler)


def test_an_empty_file_needs_no_chunk(tmp_path: Path, bundle: Path, keys: Path) -> None:
    def listed(doc: dict[str, Any]) -> None:
        doc["files"]["empty.txt"] = ""

    empty = variant(bundle, tmp_path / "with-empty", keys / "signing.key", edit=listed,
                    files={"empty.txt": b""})
    dep, chunks = deployment(empty, load_private_key(keys / "signing.key"))
    sha = dep.files["empty.txt"].sha256
    assert not any(f"/{sha}/" in t for t in chunks)  # publish sends nothing for it
    paths = OtaPaths.under(tmp_path / "gw")
    paths.make()
    staging = Staging(paths.staging, dep)
    staging.open()
    job = Download(dep, staging, LocalFiles([]), "a", PREFIX)
    for topic, payload in chunks.items():
        key = parse_chunk_topic(PREFIX, topic)
        assert key is not None
        staging.put(*key, payload)
    assert job.complete
    slot = assemble(paths, "a", staging, job.local)
    assert (slot / "empty.txt").read_bytes() == b""
    assert verify_bundle(slot, keys / "signing.pub").digest == dep.manifest_sha256
