"""Streamed replay (the CLI's) against the whole-file replay: same output file, any block size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.cli import main as agent_main
from edge_agent.data.table import iter_table
from edge_agent.errors import DataError
from edge_agent.replay import replay, replay_stream


def test_a_missing_data_file_is_named_before_the_bundle_is_read(tmp_path: Path) -> None:
    """No bundle here at all: the error is about the data file, so the bundle was not read."""
    for run in (replay, replay_stream):
        with pytest.raises(DataError, match="file not found") as err:
            run(tmp_path / "no-bundle", tmp_path / "typo.csv", tmp_path / "out.csv",
                tmp_path / "no.pub")  # fmt: skip
        assert "typo.csv" in str(err.value)
        with pytest.raises(DataError, match="not a file"):
            run(tmp_path / "no-bundle", tmp_path, tmp_path / "out.csv", tmp_path / "no.pub")
    assert not (tmp_path / "out.csv").exists()


def test_streamed_output_is_the_whole_file_output(
    bundle: Path, keys: Path, sim_csv: Path, tmp_path: Path
) -> None:
    whole = tmp_path / "whole.csv"
    res = replay(bundle, sim_csv, whole, keys / "signing.pub")
    for block_bytes in (1 << 12, 100_003, 1 << 23):
        out = tmp_path / f"stream_{block_bytes}.csv"
        summary = replay_stream(bundle, sim_csv, out, keys / "signing.pub",
                                block_bytes=block_bytes)  # fmt: skip
        assert out.read_bytes() == whole.read_bytes()
        assert summary.rows == res.stage.size
        assert summary.stage2_rows == int((res.stage == 2).sum())
        assert summary.alert_rows == int(res.alert.sum())
        assert summary.windows == res.windows.stage.size


def test_a_spike_on_a_blocks_last_row_is_marked_as_in_the_whole_file(
    bundle: Path, keys: Path, sim_csv: Path, tmp_path: Path
) -> None:
    """A spike is known from the reading after it, so a block's last row is written with the
    next block: spikes put on blocks' last rows are marked as in the whole-file replay."""
    block_bytes = 1 << 12
    ends = np.cumsum([b.rows for b in iter_table(sim_csv, block_bytes=block_bytes)]) - 1
    spiked = ends[(ends > 2000) & (ends < 9000)][::3]
    lines = sim_csv.read_text().splitlines(keepends=True)
    for row in spiked:
        cells = lines[row + 1].split(",")
        # motor_current_a, 40 A for one sample: a spike, but no jump (the compressor's loading
        # steps are larger), so only its way back tells
        cells[2] = f"{float(cells[2]) + 40.0:g}"
        lines[row + 1] = ",".join(cells)
    data = tmp_path / "spiky.csv"
    data.write_text("".join(lines))
    whole = tmp_path / "whole.csv"
    res = replay(bundle, data, whole, keys / "signing.pub")
    assert res.sensor_fault[spiked].all()
    out = tmp_path / "stream.csv"
    summary = replay_stream(bundle, data, out, keys / "signing.pub", block_bytes=block_bytes)
    assert out.read_bytes() == whole.read_bytes()
    assert summary.sensor_fault_rows == int(res.sensor_fault.sum())


def test_a_bad_row_late_in_the_file_leaves_no_output(
    bundle: Path, keys: Path, sim_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = sim_csv.read_text().splitlines()
    bad = tmp_path / "bad.csv"
    lines[-3] = lines[-3].replace(",", ",oops,", 1)
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.csv"
    with pytest.raises(DataError, match=rf"row {len(lines) - 2}: has"):
        replay_stream(bundle, bad, out, keys / "signing.pub", block_bytes=1 << 14)
    assert not out.exists()
    assert list(tmp_path.glob(".scores.csv.*")) == []
    code = agent_main(["replay", "--bundle", str(bundle), "--data", str(bad), "--out", str(out),
                       "--trust", str(keys / "signing.pub")])  # fmt: skip
    assert code == 2
    assert f"{bad}, row {len(lines) - 2}: has" in capsys.readouterr().err
