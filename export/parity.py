"""The int8 parity gate of ``export bundle``: does the int8 model decide as the float one does?

Pipeline position: inside ``export bundle`` (``export.bundle.build_bundle``), after the int8
conversion and before the bundle is signed; ``trainer federate --publish`` and ``trainer demo``
reach it through ``build_bundle``. The float and int8 models are compared on one parity set:
the run's held-out normal windows (``val_windows``), the run's labelled anomalous windows
(``labelled_windows``, when the user passed labels to ``trainer fit``) and synthetic faults
*sized against the float model's alert threshold*.

Why sized: the alert threshold is deliberately high (a tail quantile times a margin), and the
fixed-size synthetic faults of ``trainer.synthetic`` mostly stay below it, so F1 at that
threshold was 0.0 for float and int8 alike on every SKAB file: the F1 half of the gate could
not fail. Faults far above the threshold would make it 1.0 against 1.0, just as mute. So each
synthetic fault (``trainer.synthetic.inject``'s shapes, on a ladder of magnitudes) is taken at
the magnitude whose float error lands nearest a target drawn log-uniformly from
``SIZED_BAND`` times the float alert threshold: the float model's errors straddle its line,
about half of them above, and its F1 sits near 2/3 by construction, bounded away from 0 and 1.

The rule: each model is judged at *its own* alert threshold (int8's recalibrated on its own
errors of the normal windows, as the bundle will carry it), which is what the gateway does.
Where the float model catches a sized fault and the int8 model does not, F1 drops; where
quantization scrambles the ranking, ROC-AUC drops. ROC-AUC is held to a fixed limit. An F1
drop beyond its limit fails the gate only when the windows the two models judge differently
say int8 is worse beyond chance (McNemar's exact test): rounding moves errors that sit on the
line both ways, and on SKAB's 400-row histories (77 held-out windows, one sized fault each)
two such moves were already 0.02 of F1, which refused 14 of 34 well-quantized models whose
thresholds agreed within 0.3 %. Small histories get several faults per held-out window for
the same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import binom
from sklearn.metrics import f1_score, roc_auc_score

from edge_agent.bundle.manifest import ParitySpec
from edge_agent.interpreter import load_interpreter
from trainer.synthetic import inject

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
ErrorsOf = Callable[[F32], F64]

# The gate: the int8 model may lose at most this much against the float model.
MAX_F1_DROP = 0.02
MAX_AUC_DROP = 0.01
# ... and an F1 drop counts only when int8's extra mistakes are this unlikely by chance.
SIGNIFICANCE = 0.01
# Sized faults: float error / float alert threshold is drawn log-uniformly from this band.
SIZED_BAND = (0.5, 2.0)
# Multiples of trainer.synthetic's fault sizes tried per window (steps of sqrt(2)).
MAGNITUDE_LADDER = np.geomspace(1.0 / 8.0, 32.0, 17)
# Held-out windows that carry a sized fault; enough for F1 steps of about 0.005.
SIZED_WINDOWS = 300
RULE = "own_alert_threshold_sized"
# Share of held-out values outside the int8 input range above which the refusal names clipping.
CLIP_HINT_FRACTION = 1e-3
INT8_MIN, INT8_MAX = -128, 127


@dataclass(frozen=True)
class ParitySet:
    """Windows ``(n, W, C)`` with labels (1 = anomalous) and where the positives came from."""

    windows: F32
    labels: npt.NDArray[np.int8]
    normal: int
    synthetic: int
    labelled: int


def sized_faults(normal: F32, float_errors: ErrorsOf, alert_threshold: float, *, seed: int) -> F32:
    """Up to ``SIZED_WINDOWS`` synthetic faults on ``normal`` (several per window when there
    are fewer), each at the magnitude whose float error is nearest its log-uniform target in
    ``SIZED_BAND`` x ``alert_threshold``. A fault whose error stays outside the band at every
    magnitude is left out."""
    n = normal.shape[0]
    if n == 0:
        return normal
    copies = -(-SIZED_WINDOWS // n)
    faulty, _ = inject(normal, seed=seed, copies=copies)
    pick = np.unique(np.linspace(0, faulty.shape[0] - 1, SIZED_WINDOWS).astype(np.int64))
    base = np.repeat(normal, copies, axis=0)[pick]
    delta = faulty[pick] - base
    ladder = np.stack([base + np.float32(m) * delta for m in MAGNITUDE_LADDER])
    ratio = float_errors(ladder.reshape(-1, *base.shape[1:])).reshape(ladder.shape[:2])
    ratio = ratio / alert_threshold
    lo, hi = SIZED_BAND
    rng = np.random.default_rng([seed, 11])
    target = np.exp(rng.uniform(np.log(lo), np.log(hi), size=base.shape[0]))
    in_band = (ratio >= lo) & (ratio <= hi)
    distance = np.where(in_band, np.abs(np.log(np.maximum(ratio, 1e-300) / target)), np.inf)
    best = np.argmin(distance, axis=0)
    keep = np.isfinite(distance[best, np.arange(base.shape[0])])
    return np.ascontiguousarray(ladder[best[keep], np.flatnonzero(keep)])


def parity_set(normal: F32, sized: F32, labelled: F32) -> ParitySet:
    """Held-out normal windows, then the sized synthetic faults, then the labelled ones."""
    windows = np.concatenate([normal, sized, labelled]).astype(np.float32)
    labels = np.zeros(windows.shape[0], np.int8)
    labels[normal.shape[0] :] = 1
    return ParitySet(windows, labels, normal.shape[0], sized.shape[0], labelled.shape[0])


def input_clip_fraction(int8_bytes: bytes, windows: F32) -> float:
    """Share of ``windows``' values outside the int8 model's input range (they saturate)."""
    interpreter, _ = load_interpreter(int8_bytes)
    scale, zero_point = interpreter.get_input_details()[0]["quantization"]
    if not scale > 0 or windows.size == 0:
        return 0.0
    lo = (INT8_MIN - zero_point) * scale
    hi = (INT8_MAX - zero_point) * scale
    return float(np.mean((windows < lo) | (windows > hi)))


def _auc(labels: npt.NDArray[np.int8], score: F64) -> float:
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, score))


def int8_worse_p_value(
    y: npt.NDArray[np.int8], pred_f: Bools, pred_q: Bools
) -> tuple[int, int, float]:
    """McNemar's exact one-sided test on the windows the two models judge differently:
    (int8 wrong where float is right, the reverse, P(at least that many against int8 if
    either were as likely))."""
    truth = y.astype(bool)
    worse = int(np.sum((pred_q != truth) & (pred_f == truth)))
    better = int(np.sum((pred_f != truth) & (pred_q == truth)))
    if worse == 0:
        return worse, better, 1.0
    return worse, better, float(binom.sf(worse - 1, worse + better, 0.5))


def compare(
    ps: ParitySet,
    err_f: F64,
    err_q: F64,
    *,
    threshold_float: float,
    threshold_int8: float,
    clipped: float,
) -> tuple[ParitySpec, list[str]]:
    """The parity record, and the gate's failures (empty when int8 keeps float's quality).

    An F1 drop fails the gate when it exceeds ``MAX_F1_DROP`` and the windows the models
    disagree on say int8 is worse beyond chance (``int8_worse_p_value`` below
    ``SIGNIFICANCE``): int8's rounding moves errors near the line both ways, and with a
    parity set of a few hundred windows two or three such moves alone are 0.02 of F1.
    """
    y = ps.labels
    pred_f, pred_q = err_f >= threshold_float, err_q >= threshold_int8
    f1_f = float(f1_score(y, pred_f, zero_division=0.0))
    f1_q = float(f1_score(y, pred_q, zero_division=0.0))
    worse, better, p_value = int8_worse_p_value(y, pred_f, pred_q)
    auc_f, auc_q = _auc(y, err_f), _auc(y, err_q)
    rel = float(np.mean(np.abs(err_q - err_f)) / max(float(np.mean(err_f)), 1e-12))
    spec = ParitySpec(
        windows=int(y.size),
        positives=int(y.sum()),
        f1_float=f1_f,
        f1_int8=f1_q,
        auc_float=auc_f,
        auc_int8=auc_q,
        error_rel_mae=rel,
        rule=RULE,
        synthetic=ps.synthetic,
        labelled=ps.labelled,
        sized_band=list(SIZED_BAND),
        threshold_float=threshold_float,
        threshold_int8=threshold_int8,
        int8_worse=worse,
        int8_better=better,
        int8_worse_p=p_value,
        max_f1_drop=MAX_F1_DROP,
        max_auc_drop=MAX_AUC_DROP,
        significance=SIGNIFICANCE,
        input_clipped_fraction=clipped,
    )
    failures = []
    if y.sum() == 0:
        failures.append(
            "no anomalous window to compare on: no synthetic fault reaches "
            f"{SIZED_BAND[0]} x the float alert threshold even at {MAGNITUDE_LADDER[-1]:g} x "
            "its usual size, and the run has no labelled anomalies (the float model hardly "
            "responds to faults)"
        )
    if f1_f - f1_q > MAX_F1_DROP and p_value < SIGNIFICANCE:
        failures.append(
            f"F1 drops {f1_f - f1_q:.3f} (float {f1_f:.3f}, int8 {f1_q:.3f}; int8 wrong on "
            f"{worse} windows float gets right, right on {better}, p = {p_value:.2g})"
        )
    if auc_f - auc_q > MAX_AUC_DROP:
        failures.append(f"ROC-AUC drops {auc_f - auc_q:.3f} (float {auc_f:.3f}, int8 {auc_q:.3f})")
    return spec, failures
