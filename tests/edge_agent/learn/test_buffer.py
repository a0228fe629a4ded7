"""The normal-data buffer: what is kept, batched chunk files, sampling over time, the size cap
with spread over operating modes, damaged files, and the windows it gives back."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle.manifest import Manifest
from edge_agent.bundle.verify import verify_bundle
from edge_agent.data.table import SensorTable, read_table
from edge_agent.detect.cascade import STAGE_AUTOENCODER, STAGE_SCREEN
from edge_agent.learn.buffer import CORRUPT_DIR, BufferSettings, NormalBuffer
from edge_agent.learn.chunks import operating_mode
from edge_agent.learn.history import history_windows
from edge_agent.learn.select import NormalRows
from edge_agent.model_slot import load_cascade
from edge_agent.pipeline import StreamingPipeline

PERIOD_S = 1.0
CHUNK = 100


@pytest.fixture(scope="module")
def manifest(bundle: Path, keys: Path) -> Manifest:
    return verify_bundle(bundle, keys / "signing.pub").manifest


def rows_at(manifest: Manifest, n: int, t0: float = 1.7e9, z: float = 0.0,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows one period apart, around ``z`` training scales from the training mean."""
    rng = np.random.default_rng(seed)
    mean = np.array([c.mean for c in manifest.channels])
    scale = np.array([c.scale for c in manifest.channels])
    ts = t0 + np.arange(n) * PERIOD_S
    return ts, mean + scale * (z + 0.1 * rng.standard_normal((n, mean.size)))


def settings(sample_every_s: float = 0.0, max_bytes: int = 1 << 30) -> BufferSettings:
    return BufferSettings(chunk_rows=CHUNK, sample_every_s=sample_every_s, max_bytes=max_bytes)


def files(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("chunk-*.npz"))


def test_rows_are_written_in_chunks_and_come_back_as_the_pipelines_windows(
    tmp_path: Path, manifest: Manifest
) -> None:
    buf = NormalBuffer(tmp_path, settings())
    ts, rows = rows_at(manifest, 250)
    keep = np.ones(250, np.bool_)
    keep[[120, 121]] = False  # a break: the stretches either side are kept apart
    buf.add(ts[:150], rows[:150], keep[:150], manifest)
    assert len(files(tmp_path)) == 1  # one write per CHUNK kept rows, not per push
    buf.add(ts[150:], rows[150:], keep[150:], manifest)
    assert len(files(tmp_path)) == 2
    buf.add(*rows_at(manifest, 40, t0=ts[-1] + 10), np.ones(40, np.bool_), manifest)
    buf.flush(manifest)  # written at the flush: the 28 rows pending and these 40 (the
    assert buf.stats().rows == 268
    assert len(files(tmp_path)) == 3
    (tmp_path / files(tmp_path)[-1]).unlink()  # the two first chunks are compared below
    buf = NormalBuffer(tmp_path, settings())
    # Rows 100-119 were a stretch shorter than a window: dropped at the break; the second
    # chunk is rows 122-221.
    assert buf.stats().rows == 200
    w = manifest.window.length
    expect = []
    for a, b in ((0, 100), (122, 222)):
        if b - a >= w:
            table = SensorTable("x", ts[a:b], rows[a:b].astype(np.float32).astype(np.float64),
                                tuple(manifest.channel_names))
            expect.append(history_windows(table, manifest, hop=1)[0])
    got = buf.windows(manifest)
    np.testing.assert_array_equal(got, np.concatenate(expect))
    assert got.shape[1:] == (w, len(manifest.channels))
    assert buf.windows(manifest, max_windows=10).shape[0] == 10


def test_a_stretch_shorter_than_a_window_is_not_kept(tmp_path: Path, manifest: Manifest) -> None:
    buf = NormalBuffer(tmp_path, settings())
    ts, rows = rows_at(manifest, 60)
    keep = np.ones(60, np.bool_)
    keep[manifest.window.length - 5] = False
    buf.add(ts, rows, keep, manifest)
    buf.flush(manifest)
    assert buf.stats().rows == 60 - manifest.window.length + 4  # the stretch after the break


def test_at_most_one_chunk_per_sample_every_s(tmp_path: Path, manifest: Manifest) -> None:
    buf = NormalBuffer(tmp_path, settings(sample_every_s=3 * CHUNK * PERIOD_S))
    ts, rows = rows_at(manifest, 10 * CHUNK)
    buf.add(ts, rows, np.ones(ts.size, np.bool_), manifest)
    assert buf.stats().chunks == 4  # chunks start at rows 0, 300, 600, 900
    # A restart on the same directory keeps the spacing.
    again = NormalBuffer(tmp_path, settings(sample_every_s=3 * CHUNK * PERIOD_S))
    ts2, rows2 = rows_at(manifest, 2 * CHUNK, t0=ts[-1] + PERIOD_S)
    again.add(ts2, rows2, np.ones(ts2.size, np.bool_), manifest)
    assert again.stats().chunks == 4  # 1000 + 200 rows, the next may start at row 1200


def test_the_cap_evicts_the_oldest_chunk_of_the_most_common_mode(
    tmp_path: Path, manifest: Manifest
) -> None:
    probe = NormalBuffer(tmp_path / "probe", settings())
    ts, rows = rows_at(manifest, CHUNK)
    probe.add(ts, rows, np.ones(CHUNK, np.bool_), manifest)
    one = probe.stats().bytes
    buf = NormalBuffer(tmp_path / "b", settings(max_bytes=int(3.5 * one)))
    t0 = 1.7e9
    for i, z in enumerate([0.0, 0.0, 3.0, 0.0, 0.0]):  # the rare mode arrives third
        ts, rows = rows_at(manifest, CHUNK, t0=t0 + i * CHUNK * PERIOD_S, z=z, seed=i)
        buf.add(ts, rows, np.ones(CHUNK, np.bool_), manifest)
        assert buf.stats().bytes <= 3.5 * one
    kept = files(tmp_path / "b")
    assert len(kept) == 3
    starts = sorted(int(n.split("-")[1]) for n in kept)
    # Chunks 0 and 1 (the common mode's oldest) went; the rare one (2) stayed.
    assert starts == [int((t0 + i * CHUNK) * 1000) for i in (2, 3, 4)]


def test_operating_mode_is_the_normalized_mean_rounded_to_a_half(manifest: Manifest) -> None:
    _, rows = rows_at(manifest, 50, z=1.2)
    assert operating_mode(rows.astype(np.float32), manifest) == (1.0,) * len(manifest.channels)


def test_damaged_chunks_are_moved_aside_and_counted(tmp_path: Path, manifest: Manifest) -> None:
    buf = NormalBuffer(tmp_path, settings())
    ts, rows = rows_at(manifest, 3 * CHUNK)
    buf.add(ts, rows, np.ones(ts.size, np.bool_), manifest)
    names = files(tmp_path)
    (tmp_path / names[0]).write_bytes(b"not a zip")  # found at start
    again = NormalBuffer(tmp_path, settings())
    assert again.stats().chunks == 2
    assert again.corrupt == 1
    assert (tmp_path / CORRUPT_DIR / names[0]).exists()
    (tmp_path / names[1]).write_bytes(b"PK\x03\x04 broken")  # found when read
    assert again.windows(manifest).shape[0] == CHUNK - manifest.window.length + 1
    assert again.stats().chunks == 1
    assert again.corrupt == 2


def test_a_disk_that_refuses_writes_costs_rows_not_the_agent(
    tmp_path: Path, manifest: Manifest
) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    buf = NormalBuffer(root, settings())
    os.chmod(root, 0o500)
    try:
        if os.access(root, os.W_OK):
            pytest.skip("running as root: a read-only directory is writable")
        ts, rows = rows_at(manifest, 2 * CHUNK)
        buf.add(ts, rows, np.ones(ts.size, np.bool_), manifest)
        assert buf.write_errors == 2
        assert buf.stats().chunks == 0
    finally:
        os.chmod(root, 0o700)


def test_a_file_in_place_of_the_directory_is_a_write_error(
    tmp_path: Path, manifest: Manifest
) -> None:
    (tmp_path / "buffer").write_text("")
    buf = NormalBuffer(tmp_path / "buffer", settings())
    ts, rows = rows_at(manifest, CHUNK)
    buf.add(ts, rows, np.ones(CHUNK, np.bool_), manifest)
    assert buf.write_errors == 1
    assert buf.stats().chunks == 0


def test_selection_keeps_rows_of_windows_judged_normal(
    bundle: Path, keys: Path, sim_csv: Path
) -> None:
    vb = verify_bundle(bundle, keys / "signing.pub")
    m = vb.manifest
    table = read_table(sim_csv, channels=m.channel_names).select(m.channel_names)
    pipe = StreamingPipeline(m, load_cascade(vb))
    thr = m.threshold.alert_threshold
    sel = NormalRows(0.5)
    keep, judged = [], []
    for a in range(0, 6000, 500):  # pushes of several rows, as a replay source makes
        ts, rows = table.timestamps[a : a + 500], table.values[a : a + 500]
        batch = pipe.push(ts, rows)
        keep.append(sel.keep(rows, batch, thr, fault=False, open_episode=False))
        quiet = ~(batch.alert | batch.raw_alert)
        ok = quiet & ((batch.stage == STAGE_SCREEN) | (
            (batch.stage == STAGE_AUTOENCODER) & (np.nan_to_num(batch.error, nan=np.inf)
                                                  < 0.5 * thr)))
        rw = batch.row_window - batch.first_window
        judged.append(np.where(rw >= 0, ok[np.maximum(rw, 0)], False)
                      & np.isfinite(rows).all(axis=1))
        assert not sel.keep(rows, batch, thr, fault=True, open_episode=False).any()
        assert not sel.keep(rows, batch, thr, fault=False, open_episode=True).any()
    got, want = np.concatenate(keep), np.concatenate(judged)
    np.testing.assert_array_equal(got, want)
    assert 0 < got.sum() < got.size  # the file has faults: not everything is normal
