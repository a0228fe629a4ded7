"""ISO 8601 timestamps in bulk: parsing a history file's time column and formatting ``replay``'s.

The row-by-row reference is Python's ``datetime``: :func:`edge_agent.data.table_rows.parse_time`
(``fromisoformat``, naive taken as UTC) when reading, and ``fromtimestamp(t, UTC).isoformat()``
when writing. These vectorised versions give the same floats and the same text for the forms a
historian writes (``YYYY-MM-DD[T ]HH:MM[:SS[.f]]`` with ``Z`` or ``±HH:MM``, or a bare date);
every row they do not recognise is flagged, and the caller sends it down the reference path, so
an odd row costs time, never a different answer. Used by ``table_fast`` (reading) and
``replay_writer`` (writing).
"""

from __future__ import annotations

import re

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
BOOL = npt.NDArray[np.bool_]

SECONDS_PER_DAY = 86_400
US_PER_S = 1_000_000
ASCII_ZERO = 48
# Integers of microseconds convert to float64 exactly below 2**53 (years 1685 to 2255), so
# ``us / 1e6`` is the correctly rounded quotient, as ``datetime.timestamp()`` computes it.
MAX_EXACT_US = 2**53
MIN_YEAR, MAX_YEAR = 1, 9999  # datetime's range
MAX_FRACTION_DIGITS = 6  # microseconds; longer fractions go to the reference path
# One row's layout, decided from the first row of each group of equal length.
_TEMPLATE = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.(\d{1,6}))?)?(Z|[+-]\d{2}:\d{2})?)?"
)
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)


def days_from_civil(y: I64, m: I64, d: I64) -> I64:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's algorithm)."""
    y = y - (m <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days: I64 = era * 146_097 + doe - 719_468
    return days


def civil_from_days(z: I64) -> tuple[I64, I64, I64]:
    """(year, month, day) of days since 1970-01-01, the inverse of :func:`days_from_civil`."""
    z = z + 719_468
    era = np.floor_divide(z, 146_097)
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + np.where(mp < 10, 3, -9)
    return yoe + era * 400 + (m <= 2), m, d


def _parse_group(chars: U8, template: str) -> tuple[F64, BOOL]:
    """Seconds since the epoch of rows laid out like ``template``; ``ok`` where they are."""
    match = _TEMPLATE.fullmatch(template)
    n, length = chars.shape
    if match is None or n == 0:
        return np.zeros(n), np.zeros(n, np.bool_)
    punct = [i for i, ch in enumerate(template) if not ch.isdigit()]
    want = np.frombuffer("".join(template[i] for i in punct).encode("ascii"), np.uint8)
    ok = np.asarray((chars[:, punct] == want).all(axis=1), dtype=np.bool_)
    digits = chars - np.uint8(ASCII_ZERO)  # wraps: every byte but a digit becomes >= 10
    numeric = np.ones(length, np.bool_)
    numeric[punct] = False
    ok &= (digits[:, numeric] <= 9).all(axis=1)
    d = digits.astype(np.int32)

    def number(start: int, width: int) -> npt.NDArray[np.int32]:
        value = d[:, start]
        for k in range(1, width):
            value = value * 10 + d[:, start + k]
        return value

    year, month, day = number(0, 4), number(5, 2), number(8, 2)
    ok &= (year >= MIN_YEAR) & (month >= 1) & (month <= 12)
    month = np.clip(month, 1, 12)
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    ok &= (day >= 1) & (day <= _DAYS_IN_MONTH[month] + (leap & (month == 2)))
    days = days_from_civil(year.astype(np.int64), month.astype(np.int64), day.astype(np.int64))
    seconds = days * SECONDS_PER_DAY
    micros = np.zeros(n, np.int64)
    if length > len("YYYY-MM-DD"):
        hour, minute = number(11, 2), number(14, 2)
        ok &= (hour <= 23) & (minute <= 59)
        clock = hour * 3600 + minute * 60
        if len(template) > 16 and template[16] == ":":
            sec = number(17, 2)
            ok &= sec <= 59
            clock += sec
        fraction, zone = match.group(1), match.group(2)
        if fraction:
            scale = 10 ** (MAX_FRACTION_DIGITS - len(fraction))
            micros = number(20, len(fraction)).astype(np.int64) * scale
        if zone and zone not in ("Z", "z"):
            at = length - len("+HH:MM")
            zh, zm = number(at + 1, 2), number(at + 4, 2)
            ok &= (zh <= 23) & (zm <= 59)
            sign = np.where(chars[:, at] == ord("-"), -1, 1).astype(np.int32)
            clock -= sign * (zh * 3600 + zm * 60)
        seconds += clock
    total = seconds * US_PER_S + micros
    ok &= np.abs(total) < MAX_EXACT_US
    return total.astype(np.float64) / US_PER_S, ok


def parse_iso(texts: npt.NDArray[np.bytes_], lengths: I64 | None = None) -> tuple[F64, BOOL]:
    """Epoch seconds (UTC) of ISO 8601 byte strings, and a mask of the rows parsed.

    Rows of the same length are parsed together against the layout of the first of them;
    rows outside that layout, or invalid (month 13, 30 February), are left unparsed (mask
    False) for the reference path, which also writes the error message if they are bad.
    """
    n = texts.shape[0]
    out = np.zeros(n, np.float64)
    done = np.zeros(n, np.bool_)
    width = texts.dtype.itemsize
    if n == 0 or width == 0:
        return out, done
    chars = texts.view(np.uint8).reshape(n, width)
    if lengths is None:
        lengths = np.char.str_len(texts)
    low, high = int(lengths.min()), int(lengths.max())
    for length in range(low, high + 1) if high - low < width else ():
        if low == high:  # the common case: one layout, no copies
            rows, group = None, chars[:, :length]
        else:
            rows = np.flatnonzero(lengths == length)
            if not rows.size:
                continue
            group = chars[rows, :length]
        first = bytes(group[0])
        if length == 0 or not first.isascii():
            continue
        values, ok = _parse_group(group, first.decode("ascii"))
        if rows is None:
            out[ok], done[ok] = values[ok], True
        else:
            out[rows[ok]], done[rows[ok]] = values[ok], True
    return out, done
