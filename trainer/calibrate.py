"""Threshold calibration on held-out normal windows, and the cascade's screen threshold.

Runs at the desk after the autoencoder is trained; ``export`` carries the result over to the
int8 model by the ratio of the two models' tail errors (:func:`tail_error_ratio`), so the
device's threshold matches the model it runs. Produces the
:class:`edge_agent.detect.threshold.ThresholdModel` the bundle stores.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.stats import genpareto

from edge_agent.detect.forest import OUTSIDE_LIMITS
from edge_agent.detect.threshold import PotTail, ThresholdModel
from trainer.config import ThresholdConfig

QUANTILE_LEVELS = np.linspace(0.0, 1.0, 201)
# A GPD fit on fewer exceedances than this is noise; fall back to the empirical tail.
MIN_EXCEEDANCES = 10
# Held-out windows the GPD is fitted on where there are more than enough: the tail starts at
# the highest quantile that leaves this many above it (never below ``pot_level``). A GPD
# describes a tail, not the bulk. On the simulator's 2-day history (6,000 held-out windows),
# the 10 % above pot_level 0.9 held the bulk's shoulder and a second mode of starts and stops.
# The fit ran into the shape cap (xi 0.5) and put the threshold at 0.060, 1.5x the 0.039 that 1
# in 1,000 of all 32,576 held-out windows exceed. From the top 5 %, 2 % or 1 % it gave 0.042,
# 0.040 and 0.039. Fewer windows make a noisier fit (the shape's standard error is about
# (1 + xi) / sqrt(n)): from the top 60, the int8 and float thresholds of one 6-hour history
# differed by 6.5 % and the parity gate refused int8 twice in two such histories; from the top
# 100 to 400, both passed. A short history (SKAB's 400 rows: 74 windows) keeps pot_level.
POT_TAIL_WINDOWS = 200


def tail_start_level(windows: int, pot_level: float) -> float:
    """Quantile of the held-out errors where the GPD tail starts (see POT_TAIL_WINDOWS)."""
    return max(pot_level, 1.0 - POT_TAIL_WINDOWS / max(windows, 1))


# The windows whose error ratio carries the float calibration over to int8: the held-out
# windows in the top tenth by float error, where the threshold lives (8 of SKAB's 74).
TAIL_RATIO_SHARE = 0.1


def tail_error_ratio(reference: npt.NDArray[np.float64], errors: npt.NDArray[np.float64]) -> float:
    """Median of ``errors / reference`` over the windows in the top :data:`TAIL_RATIO_SHARE` of
    ``reference``: how much larger one model's errors run than another's where it matters.

    Export carries the float model's calibration over to its int8 copy by this factor
    (:meth:`ThresholdModel.scaled`) instead of fitting a second tail: int8's errors track
    float's within a few percent, but a second fit doubles the tail's estimation noise. On a
    6-hour simulator history three of 4,114 held-out windows came out 1.2-6x worse under int8;
    they set the int8 tail's shape (0.29 against float's 0.02) and its threshold 20 % above
    float's, where the median ratio over the top tenth is 1.016.
    """
    ref = np.asarray(reference, dtype=np.float64)
    err = np.asarray(errors, dtype=np.float64)
    if ref.shape != err.shape or ref.ndim != 1 or ref.size == 0:
        raise ValueError(f"need two equal 1-d error arrays, got {ref.shape} and {err.shape}")
    top = (ref >= np.quantile(ref, 1.0 - TAIL_RATIO_SHARE)) & (ref > 0)
    if not top.any():
        raise ValueError("the reference errors are all zero: no ratio to carry a threshold by")
    return float(np.median(err[top] / ref[top]))


def calibrate_threshold(
    errors: npt.NDArray[np.float64], cfg: ThresholdConfig, *, history_samples: int = 0
) -> ThresholdModel:
    """Calibrate on reconstruction errors of normal windows.

    ``history_samples`` (grid points of training history) sets how much of ``cfg.margin``
    applies; 0 means a short history, the full margin.
    """
    e = np.sort(np.asarray(errors, dtype=np.float64))
    if e.size < 20:
        raise ValueError(f"need at least 20 held-out windows to calibrate, got {e.size}")
    values = np.quantile(e, QUANTILE_LEVELS)
    values = np.maximum.accumulate(values)
    pot = None
    u = float(np.quantile(e, tail_start_level(e.size, cfg.pot_level)))
    exceed = e[e > u] - u
    if cfg.method == "pot" and exceed.size >= MIN_EXCEEDANCES:
        xi, _, sigma = genpareto.fit(exceed, floc=0.0)
        # Very heavy fitted tails come from a handful of points; cap the shape so the
        # threshold stays finite and sane.
        xi = float(np.clip(xi, -0.5, 0.5))
        pot = PotTail(
            u=u, sigma=float(max(sigma, 1e-12)), xi=xi, tail_fraction=exceed.size / e.size
        )
        q = cfg.risk / pot.tail_fraction
        if abs(xi) < 1e-6:
            thr = u + pot.sigma * -np.log(q)
        else:
            thr = u + pot.sigma / xi * (q ** (-xi) - 1.0)
        method = "pot"
    else:
        thr = float(np.percentile(e, cfg.percentile))
        method = "percentile"
    thr = float(max(thr, 1e-12) * cfg.effective_margin(history_samples))
    # Plotting positions: the largest of n normal errors is exceeded with probability about
    # 1/(n+1), not 0, so the table's top level is n/(n+1).
    levels = QUANTILE_LEVELS * e.size / (e.size + 1)
    return ThresholdModel(
        method=method,  # type: ignore[arg-type]
        statistic=cfg.statistic,
        alert_threshold=thr,
        quantile_levels=[float(x) for x in levels],
        quantile_values=[float(x) for x in values],
        pot=pot,
    )


def screen_threshold(
    screen_scores: npt.NDArray[np.float64],
    stage2_detects: npt.NDArray[np.bool_],
    *,
    keep_recall: float,
) -> float:
    """Highest screen threshold that still passes ``keep_recall`` of what stage 2 detects,
    and never above :data:`OUTSIDE_LIMITS`.

    ``screen_scores`` (:meth:`FlatForest.screen_score`) and ``stage2_detects`` are over
    anomalous validation windows (labelled or synthetic). If stage 2 detects none, nothing can
    be kept and the screen passes all. The cap means a window outside the envelope or above
    the residual limit always reaches stage 2: those limits already say "unlike the normal
    history", and live faults are subtler than the synthetic ones that would otherwise set a
    threshold among them (on the simulator such a threshold kept 89 % of stage 2's recall).
    """
    caught = np.sort(screen_scores[stage2_detects])
    if caught.size == 0:
        return 0.0
    # Windows below the threshold are lost; allow losing floor((1-keep) * n) of them.
    lose = int(np.floor((1.0 - keep_recall) * caught.size))
    return float(min(caught[lose], OUTSIDE_LIMITS))
