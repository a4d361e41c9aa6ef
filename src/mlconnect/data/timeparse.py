"""A time column -> Unix seconds (float64, NaN where missing), whatever it was written as.

* Native timestamps (Parquet, Arrow) and dates: exact; a zone-less timestamp is taken as UTC.
* Numbers (or strings that are all numbers): Unix seconds, ms, µs or ns, chosen by magnitude
  (``--time-unit`` overrides); a column whose values fall in different magnitude classes is
  refused (mixed units), naming the first odd row.
* ISO-8601 strings, with or without a zone (``Z``, ``+01:00``); zone-less ones are UTC. A column
  mixing numbers and dates, or zoned and zone-less strings, is refused (mixed formats).

Errors raise ``TimeError(row, value, problem)`` with the 0-based row; the importer names the file.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
# Divide, never multiply by UNITS: 978300760123 / 1000 is the double nearest 978300760.123, while
# 978300760123 * 1e-3 is 978300760.1230001 (and that noise ends up in the .inter text).
_DIV = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
# Unix time in seconds stays below 1e11 until the year 5138; each finer unit is 1000x larger.
_LIMITS = (("s", 1e11), ("ms", 1e14), ("us", 1e17), ("ns", float("inf")))
_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
# Not ISO-8601 but common in public dumps: Goodreads' date_added (and Twitter's created_at),
# "Sun Jul 30 07:44:10 -0700 2017".
_OTHER_FORMATS = ("%a %b %d %H:%M:%S %z %Y",)
_ZONE = r"(Z|z|[+-]\d\d:?\d\d)\s*$"
# A zone written as a word or after a space (REES46 / Kaggle eCommerce: "2019-10-01 00:00:00 UTC"):
# rewritten to the ISO form Arrow parses.
_ZONE_WORD = r"\s*(?:UTC|GMT|Z)$"
_ZONE_SPACED = r"\s+([+-]\d\d:?\d\d)$"


class TimeError(ValueError):
    def __init__(self, row: int, value: object, problem: str) -> None:
        super().__init__(f"{problem} (value {value!r})")
        self.row, self.value, self.problem = row, value, problem


def _first(mask: pa.ChunkedArray | pa.Array) -> int:
    idx = np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool))
    return int(idx[0]) if len(idx) else -1


def unit_of(values: np.ndarray) -> np.ndarray:
    """Index into ``_LIMITS`` of each value's magnitude class."""
    return np.searchsorted(np.array([lim for _, lim in _LIMITS[:-1]]), np.abs(values), side="right")


def numeric_seconds(values: np.ndarray, unit: str | None) -> tuple[np.ndarray, str]:
    """Seconds from numbers in ``unit`` (detected by magnitude when None)."""
    ok = ~np.isnan(values)
    if unit is None:
        cls = unit_of(values[ok])
        if len(cls) and (cls != cls[0]).any():
            odd = int(np.flatnonzero(ok)[np.flatnonzero(cls != cls[0])[0]])
            first = int(np.flatnonzero(ok)[0])
            raise TimeError(odd, float(values[odd]), f"mixed time units: this row looks like Unix "
                            f"{_LIMITS[int(cls[np.flatnonzero(cls != cls[0])[0]])][0]}, row {first + 1} like "
                            f"Unix {_LIMITS[int(cls[0])][0]} (pass --time-unit to say which)")
        unit = _LIMITS[int(cls[0])][0] if len(cls) else "s"
        how = f"Unix {unit} (by magnitude)"
    else:
        how = f"Unix {unit}"
    return values / _DIV[unit], how


def _int_seconds(ints: np.ndarray, unit: str) -> np.ndarray:
    """Exact integer counts of ``unit`` -> seconds: whole seconds and the fraction apart (ns exceed 2**53)."""
    whole, frac = np.divmod(ints, _DIV[unit])
    return whole.astype(np.float64) + frac.astype(np.float64) / _DIV[unit]


def _with_nans(stamps: pa.Array, unit: str) -> np.ndarray:
    """Seconds of a timestamp array, NaN where null."""
    ints = pc.fill_null(pc.cast(stamps, pa.int64()), 0).to_numpy(zero_copy_only=False)
    secs = _int_seconds(ints, unit)
    secs[stamps.is_null().to_numpy(zero_copy_only=False)] = np.nan
    return secs


def _bad_row(arr: pa.Array, target: pa.DataType) -> int:
    """The first row of ``arr`` that does not cast to ``target`` (bisection: O(n) casts in total)."""
    lo, hi = 0, len(arr)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            pc.cast(arr.slice(lo, mid - lo), target)
            lo = mid
        except pa.ArrowInvalid:
            hi = mid
    return lo


def to_seconds(col: pa.ChunkedArray, unit: str | None = None, fmt: str | None = None) -> tuple[np.ndarray, str]:
    """(seconds as float64 with NaN for nulls, how the column was read); ``fmt``: a strptime format."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(arr.type):  # pandas 'category' columns in Parquet
        arr = arr.dictionary_decode()
    t = arr.type
    if fmt is not None:
        return _formatted(arr, fmt)
    if pa.types.is_timestamp(t):
        tz = f", zone {t.tz}" if t.tz else " (no zone: UTC)"
        ints = pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False)
        secs = _int_seconds(ints, t.unit) if arr.null_count == 0 else _with_nans(arr, t.unit)
        return secs, f"timestamp{tz}"
    if pa.types.is_date(t):
        days = pc.cast(pc.cast(arr, pa.timestamp("s")), pa.int64())
        return days.to_numpy(zero_copy_only=False).astype(np.float64), "date (UTC midnight)"
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        # safe=False: ns since 1970 exceed 2**53; float64 keeps them to ~0.2 µs, plenty for ordering
        return numeric_seconds(pc.cast(arr, pa.float64(), safe=False).to_numpy(zero_copy_only=False), unit)
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise TimeError(0, None, f"a time column of type {t} cannot be read as a time")
    arr = pc.utf8_trim_whitespace(arr)
    is_num = pc.match_substring_regex(arr, _NUMBER)
    n_num = pc.sum(is_num).as_py() or 0
    n_valid = len(arr) - arr.null_count
    if n_num == n_valid:
        return numeric_seconds(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False), unit)
    if n_num:  # name the row where the format changes: the first of the class that starts later
        a, b = sorted((_first(is_num), _first(pc.invert(is_num))))
        raise TimeError(b, arr[b].as_py(), f"mixed time formats: this row is {arr[b].as_py()!r}, row {a + 1} is "
                        f"{arr[a].as_py()!r} (one format per column: Unix time or ISO-8601)")
    # after the numeric test: two regex passes over millions of Unix times would cost a second
    arr = pc.replace_substring_regex(pc.replace_substring_regex(arr, _ZONE_WORD, "Z"), _ZONE_SPACED, "\\1")
    zoned = pc.match_substring_regex(arr, _ZONE)
    n_zoned = pc.sum(zoned).as_py() or 0
    if n_zoned and n_zoned != n_valid:
        a, b = sorted((_first(pc.invert(zoned)), _first(zoned)))
        raise TimeError(b, arr[b].as_py(), f"mixed time formats: this row has a time zone, row {a + 1} "
                        f"({arr[a].as_py()!r}) does not" if zoned[b].as_py() else
                        f"mixed time formats: this row has no time zone, row {a + 1} ({arr[a].as_py()!r}) has one")
    target = pa.timestamp("ns", "UTC") if n_zoned else pa.timestamp("ns")
    try:
        stamps = pc.cast(arr, target)
    except pa.ArrowInvalid:
        try:  # a sentinel such as 9999-12-31 is past the ns range (year 2262); µs reach year 294,000
            stamps = pc.cast(arr, pa.timestamp("us", target.tz))
            return _with_nans(stamps, "us"), "ISO-8601" + (" with zone" if n_zoned else " (no zone: UTC)")
        except pa.ArrowInvalid:
            pass
        for fmt in _OTHER_FORMATS:
            try:
                stamps = pc.strptime(arr, format=fmt, unit="s")
                return _with_nans(stamps, "s"), f"'{fmt}'"
            except pa.ArrowInvalid:
                pass
        row = _bad_row(arr, target)
        raise TimeError(row, arr[row].as_py(), "not a time: expected ISO-8601 (2024-05-01T12:00:00Z) or Unix "
                        "seconds/ms (or pass --time-format)") from None
    secs = _with_nans(stamps, "ns")
    return secs, "ISO-8601" + (" with zone" if n_zoned else " (no zone: UTC)")



def _formatted(arr: pa.Array, fmt: str) -> tuple[np.ndarray, str]:
    """Times written in one strptime ``fmt`` (``--time-format``); zone-less ones are UTC."""
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise TimeError(0, None, f"--time-format applies to text times, and this column is {arr.type}")
    arr = pc.utf8_trim_whitespace(arr)
    try:
        stamps = pc.strptime(arr, format=fmt, unit="s")
    except pa.ArrowInvalid:
        lo, hi = 0, len(arr)  # bisect to the first value the format does not read
        while hi - lo > 1:
            mid = (lo + hi) // 2
            try:
                pc.strptime(arr.slice(lo, mid - lo), format=fmt, unit="s")
                lo = mid
            except pa.ArrowInvalid:
                hi = mid
        raise TimeError(lo, arr[lo].as_py(), f"not a time in --time-format {fmt!r}") from None
    return _with_nans(stamps, "s"), f"--time-format {fmt!r}"
