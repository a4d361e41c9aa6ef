"""Which columns of an event log hold the user, item and time, and what counts as a missing id.

Split out of :mod:`mlconnect.data.importer`: column names are resolved here (a header name, a
loose name, a 0-based position, or a common name), ``--where`` and ``--keep`` are checked here,
and ``ids`` applies one missing-value rule to ids from every format.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mlconnect.data.readers import NULLS, Source, norm
from mlconnect.errors import DataError, UsageError

USER_NAMES = ("user_id", "userid", "user", "uid", "customer_id", "customer", "client_id", "visitor_id",
              "account_id", "member_id", "session_id", "sessionid", "reviewer_id")
ITEM_NAMES = ("item_id", "itemid", "item", "iid", "product_id", "product", "movie_id", "movieid", "sku",
              "article_id", "track_id", "song_id", "content_id", "video_id", "book_id", "parent_asin", "asin", "isbn")
TIME_NAMES = ("timestamp", "ts", "time", "event_time", "event_timestamp", "created_at", "datetime", "date",
              "time_stamp", "unix_time", "event_ts", "unix_review_time", "date_added")
KNOWN = {norm(n) for n in (*USER_NAMES, *ITEM_NAMES, *TIME_NAMES)}
_WHERE = re.compile(r"^\s*(.+?)\s*(==|!=|>=|<=|>|<)\s*(.+?)\s*$")
_NULLS = pa.array(NULLS)


def resolve(src: Source, given: str | None, candidates: tuple[str, ...], role: str, flag: str) -> str | None:
    """The column ``given`` names (exact, loose or by 0-based position), or the first common name found."""
    if given is not None:
        if given in src.names:
            return given
        loose = [n for n in src.names if norm(n) == norm(given)]
        if loose:
            return loose[0]
        if given.isdigit() and int(given) < len(src.names):
            return src.names[int(given)]
        raise DataError(str(src.path), f"no column {given!r} for the {role} (the file has: "
                        f"{', '.join(src.names)})", line=1, hint=f"name an existing column with {flag}")
    by_norm = {norm(n): n for n in reversed(src.names)}
    for cand in candidates:
        if norm(cand) in by_norm:
            return by_norm[norm(cand)]
    return None


def user_candidates(src: Source, found: str | None) -> list[str]:
    """Every column with a common user name (Diginetica: userId, mostly "NA", beside sessionId)."""
    cands = list(dict.fromkeys(n for c in USER_NAMES for n in src.names if norm(n) == norm(c)))
    return cands if len(cands) > 1 else [found] if found else []


def fullest(table: pa.Table, cands: list[str]) -> str:
    """The candidate with the most values (ties: name order): the first name alone could keep 3% of rows."""
    return max(cands, key=lambda c: table.num_rows - int(pc.sum(ids(table.column(c)).is_null()).as_py() or 0))


def parse_where(text: str) -> tuple[str, str, Any]:
    """``col OP value``: the value in quotes is a string, else a number when it reads as one."""
    m = _WHERE.match(text)
    if not m:
        raise UsageError(f"--where {text!r} is not 'COLUMN OP VALUE'",
                         "write e.g. --where 'event_type == \"purchase\"' (OP: == != < <= > >=)")
    col, op, raw = m.groups()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return col, op, raw[1:-1]
    try:
        return col, op, float(raw)
    except ValueError:
        return col, op, raw


def keep_columns(src: Source, keep: list[str], taken: set[str]) -> list[tuple[str, str]]:
    """(source column, output name) per ``--keep COL[=NAME]``; a name already used is refused.

    Two fields with one name make an atomic file RecBole misreads (and training silently uses the first).
    """
    kept: list[tuple[str, str]] = []
    for spec in keep:
        col, _, new = spec.partition("=")
        new = new or (col if not col.isdigit() else f"col{col}")
        source = resolve(src, col, (), f"--keep {spec}", "--keep")
        assert source is not None  # resolve raises for a name it cannot find
        if new in taken:
            raise UsageError(f"--keep {spec}: the .inter file already has a field {new!r}",
                             f"give it another name: --keep {col}=OTHER_NAME")
        taken.add(new)
        kept.append((source, new))
    return kept


def strings(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A column as one string array (dictionaries decoded, numbers cast)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    return arr


def ids(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Ids as strings, null where missing: one rule for every format.

    Missing means null, empty, only whitespace, or one of the CSV reader's null tokens ("NA",
    "null", "NaN", ...) once trimmed. A Parquet or JSON export writes anonymous users as "" or
    "NA"; kept as ids they would merge into one giant user, and differ from the same CSV.
    """
    arr = strings(col)
    missing = pc.is_in(pc.utf8_trim_whitespace(arr), value_set=_NULLS)
    if not pc.any(missing).as_py():
        return arr
    return pc.if_else(missing, pa.scalar(None, arr.type), arr)
