"""``edge_agent replay``: the device pipeline over a file, the offline twin of the daemon.

Verifies the bundle exactly as the daemon does, runs the same grid, windows, forest, int8
autoencoder, thresholds and hysteresis over every row, and writes one output row per input
row, in input order. Run it on history before deploying a model.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from edge_agent.bundle.verify import verify_bundle
from edge_agent.data.table import read_table
from edge_agent.model_slot import load_cascade
from edge_agent.pipeline import PipelineResult, run_pipeline

log = logging.getLogger("edge_agent.replay")

OUTPUT_COLUMNS = ("timestamp", "stage", "score", "p_anomaly", "alert")


def replay(
    bundle_dir: Path,
    data: Path,
    out: Path,
    trust: Path | Sequence[Path],
    *,
    time_col: str | None = None,
    num_threads: int = 1,
) -> PipelineResult:
    bundle = verify_bundle(bundle_dir, trust)
    m = bundle.manifest
    table = read_table(data, time_col=time_col, channels=m.channel_names)
    cascade = load_cascade(bundle, num_threads=num_threads)
    log.info("bundle %s verified; %d rows from %s", m.model_version, table.rows, data)
    result = run_pipeline(table, m, cascade)
    write_scores(out, table.timestamps, result)
    return result


def _iso(t: float) -> str:
    stamp = dt.datetime.fromtimestamp(t, dt.UTC)
    text = stamp.isoformat(timespec="milliseconds" if t % 1 else "seconds")
    return text.replace("+00:00", "Z")


def write_scores(out: Path, timestamps: object, result: PipelineResult) -> None:
    """Write the per-row CSV atomically (temporary file, then rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(OUTPUT_COLUMNS)
            w.writerows(
                (_iso(float(t)), int(s), f"{sc:.6g}", f"{p:.6g}", int(a))
                for t, s, sc, p, a in zip(
                    timestamps,  # type: ignore[call-overload]
                    result.stage,
                    result.score,
                    result.p_anomaly,
                    result.alert,
                    strict=True,
                )
            )
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
