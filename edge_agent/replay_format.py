"""Text of ``replay``'s output rows, built for a whole block of rows at once.

The reference is the per-row writer ``replay`` had: ``csv.writer`` with the row
``(_iso(t), stage, f"{score:.6g}", f"{p_anomaly:.6g}", alert)`` and ``\\r\\n`` line ends (and
now a ``sensor_fault`` flag after ``alert``, written like it). Here
each column becomes fixed-width bytes (NUL-padded) with numpy arithmetic, the columns are laid
side by side with their separators, and the padding is dropped, so a block costs a few array
passes. Values whose text arithmetic cannot vouch for (not finite, far out of range, a decimal
tie within rounding error) are formatted by Python's own ``format`` for those rows only.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import numpy.typing as npt

from edge_agent.data.iso_times import SECONDS_PER_DAY, US_PER_S, civil_from_days

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

SIGNIFICANT = 6  # "%.6g"
NUMBER_BYTES = 1 + 1 + 1 + 3 + SIGNIFICANT + 5  # sign, "0.000dddddd", "e+308"
# Powers of ten up to 1e22 are exact doubles, so x * 10**k is x times the exact power, rounded once.
MAX_EXACT_POWER = 22
# |error| of the scaled value below 1e6 is under 1e6 * 2**-53 ~ 1.1e-10: a fraction further than
# this from one half rounds the same as the exact decimal expansion would.
TIE_MARGIN = 1e-8
ISO_BYTES = 24  # "YYYY-MM-DDTHH:MM:SS.mmmZ"
MS_PER_S = 1000
LINE_END = b"\r\n"
SEPARATOR = ord(",")


def _digits(value: I64, width: int) -> U8:
    """(n, width) ASCII digits of non-negative integers, zero-padded."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((value[:, None] // powers) % 10 + ord("0")).astype(np.uint8)


# Sources a template picks from, per row: the six digits, then these constants.
_POINT, _ZERO, _NUL = SIGNIFICANT, SIGNIFICANT + 1, SIGNIFICANT + 2
_CONSTANTS = np.array([ord("."), ord("0"), 0], np.uint8)
BODY_BYTES = 1 + 1 + 3 + SIGNIFICANT  # "0.000dddddd", the longest body
LOWEST_FIXED = -4  # "%g" writes exponents -4 .. 5 in fixed notation


def _templates() -> npt.NDArray[np.intp]:
    """For exponent x (-4..5) and s significant digits (1..6): the body's sources."""
    out = np.full((SIGNIFICANT - LOWEST_FIXED, SIGNIFICANT, BODY_BYTES), _NUL, np.intp)
    for x in range(LOWEST_FIXED, SIGNIFICANT):
        for s in range(1, SIGNIFICANT + 1):
            if x >= 0:
                body = list(range(x + 1))
                if s > x + 1:
                    body += [_POINT, *range(x + 1, s)]
            else:
                body = [_ZERO, _POINT] + [_ZERO] * (-x - 1) + list(range(s))
            out[x - LOWEST_FIXED, s - 1, : len(body)] = body
    return out


_TEMPLATES = _templates()
# Six digits are looked up as two halves of three: small tables, built at import in microseconds.
HALF = SIGNIFICANT // 2
_HALF_DIGITS = _digits(np.arange(10**HALF, dtype=np.int64), HALF)
_TWO_DIGITS = _digits(np.arange(100, dtype=np.int64), 2)
_HALF_ZEROS = np.zeros(10**HALF, np.intp)  # trailing zeros of 1..999 (0 counts as HALF)
for _i in range(HALF):
    _HALF_ZEROS[:: 10 ** (_i + 1)] += 1


def format_g6(x: F64) -> U8:
    """``f"{v:.6g}"`` of every value, as (n, NUMBER_BYTES) ASCII with NUL holes to drop."""
    n = x.shape[0]
    a = np.abs(x)
    fine = np.isfinite(x) & (a > 0)
    a = np.where(fine, a, 1.0)  # placeholders for the rows formatted apart
    k = SIGNIFICANT - 1 - np.floor(np.log10(a)).astype(np.int64)
    fine &= np.abs(k) <= MAX_EXACT_POWER
    k = np.where(fine, k, 0)
    scale = 10.0 ** np.abs(k)
    y = np.where(k >= 0, a * scale, a / scale)
    wrong = (y >= 10.0**SIGNIFICANT) | (y < 10.0 ** (SIGNIFICANT - 1))
    if wrong.any():  # log10 off by one next to a power of ten
        k[wrong] += np.where(y[wrong] < 10.0 ** (SIGNIFICANT - 1), 1, -1)
        scale = 10.0 ** np.abs(k[wrong])
        y[wrong] = np.where(k[wrong] >= 0, a[wrong] * scale, a[wrong] / scale)
    fine &= np.abs(y - np.floor(y) - 0.5) > TIE_MARGIN
    d = np.rint(np.where(fine, y, 0.0)).astype(np.int64)  # 0 for zeros: written "0"
    carry = d >= 10**SIGNIFICANT
    d[carry] //= 10
    zero = x == 0
    exp = np.where(zero, 0, SIGNIFICANT - 1 - k + carry)  # the exponent "%e" would print
    high, low = np.divmod(np.clip(d, 0, 10**SIGNIFICANT - 1), 10**HALF)
    sig = SIGNIFICANT - np.where(low == 0, HALF + _HALF_ZEROS[high], _HALF_ZEROS[low])
    sig = np.maximum(sig, 1)
    fixed = (exp >= LOWEST_FIXED) & (exp < SIGNIFICANT)
    x_eff = np.where(fixed, exp, 0) - LOWEST_FIXED
    source = np.concatenate(
        [_HALF_DIGITS[high], _HALF_DIGITS[low], np.broadcast_to(_CONSTANTS, (n, 3))], axis=1
    )
    out = np.zeros((n, NUMBER_BYTES), np.uint8)
    out[:, 0] = np.where(np.signbit(x), ord("-"), 0)
    out[:, 1 : 1 + BODY_BYTES] = np.take_along_axis(source, _TEMPLATES[x_eff, sig - 1], axis=1)
    sci = np.flatnonzero(~fixed & fine)
    if sci.size:  # "e+XX" after the body, in exponent style only
        e = exp[sci]
        tail = np.zeros((sci.size, 5), np.uint8)
        tail[:, 0] = ord("e")
        tail[:, 1] = np.where(e < 0, ord("-"), ord("+"))
        tail[:, 2:] = _digits(np.abs(e), 3)
        tail[np.abs(e) < 100, 2] = 0
        out[sci, 1 + BODY_BYTES :] = tail
    for i in np.flatnonzero(~fine & ~zero).tolist():  # not finite, far out, or near a tie
        text = f"{float(x[i]):.6g}".encode("ascii")
        out[i] = 0
        out[i, : len(text)] = np.frombuffer(text, np.uint8)
    return out


def format_g6_sparse(x: F64) -> U8:
    """:func:`format_g6`, computed only for the non-zero values: ``p_anomaly`` is 0 wherever
    the screen passed the window (most rows), and zeros are written ``0`` or ``-0``."""
    nonzero = np.flatnonzero(x != 0)  # NaN included
    if nonzero.size == x.shape[0]:
        return format_g6(x)
    out = np.zeros((x.shape[0], NUMBER_BYTES), np.uint8)
    out[:, 0] = np.where(np.signbit(x), ord("-"), 0)
    out[:, 1] = ord("0")
    if nonzero.size:
        out[nonzero] = format_g6(x[nonzero])
    return out


def iso_text(t: float) -> str:
    """One timestamp as the writer shows it (the reference for :func:`format_iso`)."""
    stamp = dt.datetime.fromtimestamp(t, dt.UTC)
    text = stamp.isoformat(timespec="milliseconds" if t % 1 else "seconds")
    return text.replace("+00:00", "Z")


def format_iso(t: F64) -> U8:
    """:func:`iso_text` of every timestamp, as (n, ISO_BYTES) NUL-padded ASCII."""
    n = t.shape[0]
    whole = np.trunc(t)
    us = np.rint((t - whole) * US_PER_S)  # fromtimestamp: modf, then round half to even
    sec = whole.astype(np.int64) + np.where(us >= US_PER_S, 1, 0) - np.where(us < 0, 1, 0)
    us = np.where(us >= US_PER_S, us - US_PER_S, np.where(us < 0, us + US_PER_S, us))
    days, rest = np.divmod(sec, SECONDS_PER_DAY)
    year, month, day = civil_from_days(days)
    minutes, second = np.divmod(rest, 60)
    hour, minute = np.divmod(minutes, 60)
    century, yy = np.divmod(np.clip(year, 0, 9999), 100)
    two = _TWO_DIGITS
    out = np.empty((n, ISO_BYTES), np.uint8)
    out[:, 0:2], out[:, 2:4] = two[century], two[yy]
    out[:, 4] = out[:, 7] = ord("-")
    out[:, 5:7], out[:, 8:10] = two[month], two[day]
    out[:, 10] = ord("T")
    out[:, 11:13], out[:, 14:16], out[:, 17:19] = two[hour], two[minute], two[second]
    out[:, 13] = out[:, 16] = ord(":")
    frac = t != whole  # ``t % 1`` is non-zero
    out[:, 19] = np.where(frac, ord("."), ord("Z"))
    out[:, 20:23] = np.where(frac[:, None], _HALF_DIGITS[us.astype(np.intp) // MS_PER_S], 0)
    out[:, 23] = np.where(frac, ord("Z"), 0)
    for i in np.flatnonzero((year < 1) | (year > 9999)).tolist():
        text = iso_text(float(t[i])).encode("ascii")  # raises out of datetime's range
        out[i] = 0
        out[i, : len(text)] = np.frombuffer(text, np.uint8)
    return out


def score_lines(
    timestamps: F64,
    stage: npt.NDArray[np.int8],
    score: F64,
    p_anomaly: F64,
    alert: npt.NDArray[np.bool_],
    sensor_fault: npt.NDArray[np.bool_],
) -> bytes:
    """The output rows of a block: ``timestamp,stage,score,p_anomaly,alert,sensor_fault\\r\\n``
    each."""
    n = timestamps.shape[0]
    sep = np.full((n, 1), SEPARATOR, np.uint8)
    cells = [
        format_iso(np.asarray(timestamps, np.float64)),
        sep,
        _digits(np.asarray(stage, np.int64), 1),
        sep,
        format_g6_sparse(np.asarray(score, np.float64)),
        sep,
        format_g6_sparse(np.asarray(p_anomaly, np.float64)),
        sep,
        _digits(np.asarray(alert, np.int64), 1),
        sep,
        _digits(np.asarray(sensor_fault, np.int64), 1),
        np.tile(np.frombuffer(LINE_END, np.uint8), (n, 1)),
    ]
    return np.concatenate(cells, axis=1).tobytes().translate(None, b"\x00")
