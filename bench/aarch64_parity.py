"""Parity of the compiled kernels across architectures: the pipeline over SKAB files on this
process's backend, and the comparison of two such runs (used by bench/aarch64_emulated.sh).

    python bench/aarch64_parity.py run SRC_ROOT WORK OUT.npz   # EDGE_KERNELS picks the backend
    python bench/aarch64_parity.py compare A.npz B.npz          # differing values and max ULP

WORK holds ``bundle_<tag>/``, ``keys/signing.pub`` and ``<tag>.csv`` for each tag in TAGS
(bundles fitted on the desk on rows [0, 400) of the SKAB file, as bench/skab.py does).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

TAGS = ("valve1_1", "valve2_1", "other_1")


def run(src: str, work: Path, out: str) -> None:
    sys.path.insert(0, src)
    from edge_agent.bundle.verify import verify_bundle
    from edge_agent.data.table import read_table
    from edge_agent.kernels import backend
    from edge_agent.model_slot import load_cascade
    from edge_agent.pipeline import run_pipeline

    saved: dict[str, np.ndarray] = {}
    for tag in TAGS:
        b = verify_bundle(work / f"bundle_{tag}", work / "keys" / "signing.pub")
        m = b.manifest
        cascade = load_cascade(b, num_threads=1)
        t = read_table(work / f"{tag}.csv", label_cols=["anomaly", "changepoint"],
                       channels=m.channel_names)  # fmt: skip
        t0 = time.perf_counter()
        r = run_pipeline(t, m, cascade)
        w = r.windows
        fields = {"score": w.score, "p": w.p_anomaly, "err": w.error, "stage": w.stage,
                  "raw": w.raw_alert, "alert": r.window_alert, "row_alert": r.alert}  # fmt: skip
        saved.update({f"{tag}.{k}": v for k, v in fields.items()})
        print(backend().kind, tag, "windows", w.score.size, "alerts", int(r.window_alert.sum()),
              f"{time.perf_counter() - t0:.2f} s", flush=True)  # fmt: skip
    np.savez(out, **saved)  # type: ignore[arg-type]


def compare(a_path: str, b_path: str) -> dict[str, dict[str, int]]:
    a, b = np.load(a_path), np.load(b_path)
    report: dict[str, dict[str, int]] = {}
    for k in a.files:
        x, y = a[k], b[k]
        if x.dtype == np.float64:
            differ = ~((x == y) | (np.isnan(x) & np.isnan(y)))
            ulp = np.abs(x.view(np.int64) - y.view(np.int64))
            worst = int(ulp[differ].max()) if differ.any() else 0
            report[k] = {"n": int(x.size), "differ": int(differ.sum()), "max_ulp": worst}
        else:
            report[k] = {"n": int(x.size), "differ": int((x != y).sum())}
    return report


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(sys.argv[2], Path(sys.argv[3]), sys.argv[4])
    else:
        print(json.dumps(compare(sys.argv[2], sys.argv[3]), indent=1))
