"""Cost of data quality on the gateway: the per-sample checks, and the learned ones offline.

Two figures, on synthetic readings (the cost does not depend on the values' meaning):

* the agent's :class:`~edge_agent.data.quality.QualityMonitor` ``check`` per sample, once
  per model period in the daemon's loop: without a model (configured checks only), and with
  a model's learned stuck, noise, jump and spike limits (``edge_agent.data.repeats``,
  ``edge_agent.data.roughness``, ``edge_agent.data.jumps``, ``edge_agent.data.spikes``);
  median and p99 over
  ``--samples`` calls after a warm-up;
* :class:`~edge_agent.data.learned.LearnedChecks` ``apply`` over blocks of rows, as ``replay``
  and ``run_pipeline`` run it, in channel-samples per second.

    python bench/quality_cost.py                    # -> bench/results/quality_cost.json
    python bench/quality_cost.py --samples 2000 --rows 50000 --out X   # CI smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WARM_UP = 500
BLOCK_ROWS = 100_000  # about what one 8 MB block of replay's CSV holds


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def _limits(channels: int) -> Any:
    """Learned limits that normal readings (here N(0, 1)) stay within, as in normal running."""
    from edge_agent.data.learned import LearnedLimits

    return LearnedLimits((10,) * channels, (5.0,) * channels, (10.0,) * channels, (5.0,) * channels)


def _check_cost(channels: int, samples: int, learned: bool) -> dict[str, float]:
    from edge_agent.config.model import QualityDefaults
    from edge_agent.data.quality import ModelChannels, QualityMonitor

    names = [f"ch{i}" for i in range(channels)]
    training = None
    if learned:
        training = ModelChannels(np.zeros(channels), np.ones(channels), _limits(channels))
    mon = QualityMonitor(names, {}, QualityDefaults(), "bench", training=training)
    rng = np.random.default_rng(0)
    values = rng.normal(size=(WARM_UP + samples, channels))
    age, fresh = np.full(channels, 0.1), np.ones(channels, np.bool_)
    for i in range(WARM_UP):
        mon.check(float(i), values[i], age, fresh)
    spent = np.empty(samples)
    for k in range(samples):
        i = WARM_UP + k
        t0 = time.perf_counter()
        mon.check(float(i), values[i], age, fresh)
        spent[k] = time.perf_counter() - t0
    return {
        "median_us": round(float(np.median(spent)) * 1e6, 2),
        "p99_us": round(float(np.quantile(spent, 0.99)) * 1e6, 2),
    }


def _offline_rate(channels: int, rows: int, repeats: int) -> dict[str, float]:
    from edge_agent.data.learned import LearnedChecks

    values = np.random.default_rng(1).normal(size=(rows, channels))
    best = []
    for _ in range(repeats):
        checks = LearnedChecks(_limits(channels))
        t0 = time.perf_counter()
        for s in range(0, rows, BLOCK_ROWS):
            checks.apply(values[s : s + BLOCK_ROWS])
        best.append(time.perf_counter() - t0)
    seconds = float(np.median(best))
    return {
        "rows": rows,
        "seconds_median": round(seconds, 4),
        "channel_samples_per_s": round(rows * channels / seconds),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=_positive, default=8)
    ap.add_argument("--samples", type=_positive, default=20_000, help="check calls timed")
    ap.add_argument("--rows", type=_positive, default=940_500, help="rows for the offline checks")
    ap.add_argument("--repeats", type=_positive, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality_cost.json")
    a = ap.parse_args(argv)
    from bench.common import machine, write_report

    report: dict[str, Any] = {
        "benchmark": "data quality: QualityMonitor.check per sample; LearnedChecks.apply offline",
        "channels": a.channels,
        "check_per_sample": {
            "configured_only": _check_cost(a.channels, a.samples, learned=False),
            "with_learned_limits": _check_cost(a.channels, a.samples, learned=True),
        },
        "learned_checks_offline": _offline_rate(a.channels, a.rows, a.repeats),
        "machine": machine(),
    }
    return write_report(a.out, report)


if __name__ == "__main__":
    main()
