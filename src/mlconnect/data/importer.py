"""``mlconnect data import``: an event log (CSV / TSV / Parquet / JSON Lines) -> RecBole atomic files + card.

Columns are named by the caller (``--user``, a header name or a 0-based position) or found among
common names. Rows that cannot be used (a where-filter, a missing id or time, a duplicate, the
k-core filter) are dropped and counted by reason in the card; values that are *wrong* (a time that
is not a time, times in mixed formats, a user column with no value at all) stop the import with
one line naming the file, row and column. Output goes through ``staging_dir``: nothing is
half-written. Rows keep their source order, except that each user's rows are put in time
order (in that user's own slots); the time column is written as Unix seconds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlconnect.data.card import make_card
from mlconnect.data.columns import (
    ITEM_NAMES,
    KNOWN,
    TIME_NAMES,
    USER_NAMES,
    fullest,
    ids,
    keep_columns,
    parse_where,
    resolve,
    strings,
    user_candidates,
)
from mlconnect.data.filters import kcore_mask
from mlconnect.data.readers import Source, norm, open_source, row_location
from mlconnect.data.synth import staging_dir
from mlconnect.data.timeparse import TimeError, to_seconds
from mlconnect.errors import DataError, UsageError

_OPS = {"==": pc.equal, "!=": pc.not_equal, ">=": pc.greater_equal, "<=": pc.less_equal, ">": pc.greater,
        "<": pc.less}
WRITE_BATCH = 1 << 20
__all__ = ["KNOWN", "import_events", "parse_where", "resolve"]


def _fail(src: Source, row: int, column: str, problem: str) -> DataError:
    path, line, where = row_location(src, row)
    return DataError(path + (f", {where}" if where else ""), problem, line=line, column=column,
                     hint="fix the value in the file, or say how to read it with --time / --time-unit / "
                     "--time-format")


def _clean(col: pa.Array) -> pa.Array:
    """Tabs and line breaks inside a value become spaces (memchr scans first: most columns have none)."""
    if any(pc.any(pc.match_substring(col, ch)).as_py() for ch in ("\t", "\n", "\r")):
        return pc.replace_substring_regex(col, r"[\t\r\n]", " ")
    return col


def _write_rows(f: Any, columns: list[pa.Array]) -> None:
    """Tab-joined rows, vectorised in Arrow; tabs and newlines inside values become spaces."""
    n = len(columns[0])
    cols = [_clean(pc.fill_null(c, "")) for c in columns]
    for a in range(0, n, WRITE_BATCH):
        parts = [c.slice(a, WRITE_BATCH) for c in cols]
        line = pc.binary_join_element_wise(*parts, "\t") if len(parts) > 1 else parts[0]
        line = pc.binary_join_element_wise(line, "", "\n").cast(pa.large_string())
        offsets = np.frombuffer(line.buffers()[1], dtype=np.int64)[line.offset:line.offset + len(line) + 1]
        f.write(memoryview(line.buffers()[2])[int(offsets[0]):int(offsets[-1])])


def _drop_duplicates(mask: np.ndarray, users: np.ndarray, items: np.ndarray, seconds: np.ndarray) -> int:
    """Unmask every repeat of a (user, item, time) after its first row in the file; return how many.

    One plain sort of the (user, item) keys finds the pairs that occur more than once; only those
    rows (usually few) get the exact three-key sort.
    """
    rows = np.flatnonzero(mask)
    pair = users[rows] * (int(items.max(initial=0)) + 1) + items[rows]
    order = np.argsort(pair)
    eq = pair[order[1:]] == pair[order[:-1]]
    cand = np.zeros(len(rows), dtype=bool)
    cand[1:] |= eq
    cand[:-1] |= eq
    c = np.sort(order[cand])  # candidates in file order
    c = c[np.lexsort((c, seconds[rows[c]], pair[c]))]
    same = (pair[c[1:]] == pair[c[:-1]]) & (seconds[rows[c[1:]]] == seconds[rows[c[:-1]]])
    mask[rows[c[1:][same]]] = False
    return int(same.sum())


def _time_ordered(rows: np.ndarray, users: np.ndarray, seconds: np.ndarray) -> tuple[np.ndarray, int]:
    """``rows`` with each user's rows sorted by exact time (ties: file order), in the file's slots.

    The engine (like RecBole) orders a user's rows by a min-max-normalised float32 time, which
    cannot tell apart seconds on a year-long span: ties fall back to file order, so a log exported
    newest-first would train on scrambled sequences. Each user keeps the slots its rows had in the
    file (the layout does not change), filled with its rows in time order. Returns how many moved.
    """
    u, s = users[rows], seconds[rows]
    by_file = np.argsort(u, kind="stable")  # each user's slots, in file order
    su, uu = s[by_file], u[by_file]
    if np.all((su[1:] >= su[:-1]) | (uu[1:] != uu[:-1])):  # already in time order (the usual export)
        return rows, 0
    del su, uu
    # each user's rows by time, then file order (Arrow's sort is stable; twice as fast as np.lexsort)
    by_time = pc.sort_indices(pa.table({"u": u, "s": s}), sort_keys=[("u", "ascending"), ("s", "ascending")])
    by_time = by_time.to_numpy()
    moved = int(np.count_nonzero(by_file != by_time))
    if not moved:
        return rows, 0
    out = np.empty_like(rows)
    out[by_file] = rows[by_time]
    return out, moved


def _codes(arr: pa.Array) -> np.ndarray:
    """int64 code per row (nulls get 0: callers mask them out)."""
    return pc.fill_null(pc.dictionary_encode(arr).indices, 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _time_text(seconds: np.ndarray) -> pa.Array:
    if np.all(np.floor(seconds) == seconds) and np.abs(seconds).max(initial=0) < 2**53:
        return pc.cast(pa.array(seconds.astype(np.int64)), pa.string())
    return pc.cast(pa.array(seconds), pa.string())


def _field(col: pa.Array) -> tuple[str, pa.Array]:
    """(RecBole type, text) of a carried column: float when every value is a number."""
    if col.null_count == 0 and (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        return "float", pc.cast(col, pa.string())
    text = strings(pa.chunked_array([col]))
    try:
        if text.null_count == 0 and len(text):
            pc.cast(text, pa.float64())
            return "float", text
    except pa.ArrowInvalid:
        pass
    return "token", text


def import_events(path: str | Path, out_dir: str | Path, name: str | None = None, *, user: str | None = None,
                  item: str | None = None, time: str | None = None, time_unit: str | None = None,
                  time_format: str | None = None, header: bool | None = None, sep: str | None = None,
                  where: list[str] | None = None, keep: list[str] | None = None,
                  items_file: str | Path | None = None, min_user_inter: int = 0, min_item_inter: int = 0,
                  dedup: bool = True, overwrite: bool = False) -> tuple[Path, dict[str, Any]]:
    """Import ``path`` into ``out_dir/<name>/`` (``.inter``, ``.item``, ``card.json``, a suggested config).

    Returns the dataset folder and its card. ``keep`` entries are ``COL`` or ``COL=NAME``.
    """
    # A column named on the command line and found in the first line makes that line the header.
    named = {norm(n) for n in (user, item, time) if n not in (None, "none") and not n.isdigit()}
    src = open_source(Path(path), sep=sep, header=header, known=KNOWN | named)
    name = name or re.sub(r"\.(csv|tsv|txt|data|parquet|jsonl|ndjson|json|gz|zst)$", "", src.path.name,
                          flags=re.I).split(".")[0] or "dataset"
    ucol = resolve(src, user, USER_NAMES, "user id", "--user")
    ucands = user_candidates(src, ucol) if user is None else [ucol]
    icol = resolve(src, item, ITEM_NAMES, "item id", "--item")
    # --time none: no time column even where one is found (row order is time order)
    tcol = None if time == "none" and "none" not in src.names else resolve(src, time, TIME_NAMES, "time", "--time")
    for col, role, flag, cands in ((ucol, "user id", "--user", USER_NAMES), (icol, "item id", "--item", ITEM_NAMES)):
        if col is None:
            raise DataError(str(src.path), f"no {role} column: none of {', '.join(cands[:6])}, ... (the file has: "
                            f"{', '.join(src.names)})", line=1, hint=f"name it with {flag} COLUMN")
    kept = keep_columns(src, keep or [], {"user_id", "item_id", *(["timestamp"] if tcol else [])})
    conds = [parse_where(w) for w in where or []]
    conds = [(resolve(src, c, (), f"--where {c}", "--where"), op, v) for c, op, v in conds]
    table = src.read([*ucands, icol, *([tcol] if tcol else []), *(c for c, _ in kept), *(c for c, _, _ in conds)])
    ucol = fullest(table, ucands)
    n = table.num_rows
    if n == 0:
        raise DataError(str(src.path), "the file has no rows", hint="export the data again")
    dropped: dict[str, int] = {}
    mask = np.ones(n, dtype=bool)
    for col, op, value in conds:
        arr = table.column(col)
        if isinstance(value, float) and not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
            try:
                arr = pc.cast(arr, pa.float64())
            except pa.ArrowInvalid as exc:
                raise UsageError(f"--where {col} {op} {value:g}: column {col!r} is not numeric ({exc})",
                                 "quote the value to compare as text") from None
        elif isinstance(value, str):
            arr = strings(arr)
        ok = _OPS[op](arr, value).fill_null(False).to_numpy(zero_copy_only=False)
        if op == "==" and not ok.any():  # a typo ("purchase" for "transaction") should not read as "no data"
            seen = pc.unique(strings(pa.chunked_array([arr])).drop_null()).to_pylist()
            raise UsageError(f"--where {col} == {value!r} matches no row ({col!r} has: "
                             f"{', '.join(map(repr, sorted(seen)[:8]))}{', ...' if len(seen) > 8 else ''})",
                             "use one of those values")
        dropped[f"--where {col} {op} {value!r}"] = int((mask & ~ok).sum())
        mask &= ok
    users, items = ids(table.column(ucol)), ids(table.column(icol))
    for col, arr, role in ((ucol, users, "user"), (icol, items, "item")):
        nulls = arr.is_null().to_numpy(zero_copy_only=False)
        if nulls.all():
            raise DataError(str(src.path), f"the {role} column is empty in every row", column=col,
                            hint=f"pick another column with --{role}")
        dropped[f"no {role} id"] = int((mask & nulls).sum())
        mask &= ~nulls
    seconds, time_order = None, "row order within each user (no time column)"
    if tcol:
        try:
            seconds, how = to_seconds(table.column(tcol), time_unit, time_format)
        except TimeError as exc:
            raise _fail(src, exc.row, tcol, str(exc)) from None
        time_order = f"column {tcol!r}, read as {how}"
        nulls = np.isnan(seconds)
        dropped["no time"] = int((mask & nulls).sum())
        mask &= ~nulls
    ucodes, icodes = _codes(users), _codes(items)
    if dedup and seconds is not None:
        dropped["duplicate (user, item, time)"] = _drop_duplicates(mask, ucodes, icodes, seconds)
    if min_user_inter > 1 or min_item_inter > 1:
        before = int(mask.sum())
        mask = kcore_mask(ucodes, icodes, mask,
                          (float(max(min_user_inter, 0)), np.inf, True, True),
                          (float(max(min_item_inter, 0)), np.inf, True, True))
        dropped[f"k-core (users >= {min_user_inter}, items >= {min_item_inter})"] = before - int(mask.sum())
    if not mask.any():
        raise DataError(str(src.path), "no rows left after filtering", hint="loosen --where / --min-*-inter")
    rows = np.flatnonzero(mask)
    if seconds is not None:
        rows, moved = _time_ordered(rows, ucodes, seconds)
        if moved:
            time_order += f"; {moved:,} rows were out of time order: each user's rows are written sorted by time"
    take = pa.array(rows)
    header = ["user_id:token", "item_id:token"]
    out_cols = [users.take(take), items.take(take)]
    extra: list[tuple[int, str, pa.Array]] = []  # time and kept columns, written in the source's column order
    if seconds is not None:
        extra.append((src.names.index(tcol), "timestamp:float", _time_text(seconds[rows])))
    for col, new in kept:
        ftype, text = _field(table.column(col).combine_chunks().take(take))
        extra.append((src.names.index(col), f"{new}:{ftype}", text))
    for _, head, text in sorted(extra, key=lambda e: e[0]):
        header.append(head)
        out_cols.append(text)
    n_catalog = None
    columns = {"user": ucol, "item": icol, "time": tcol, **{f"keep {new}": col for col, new in kept}}
    with staging_dir(Path(out_dir), name, overwrite=overwrite) as tmp:
        with open(tmp / f"{name}.inter", "wb") as f:
            f.write(("\t".join(header) + "\n").encode())
            _write_rows(f, out_cols)
        if items_file is not None:
            n_catalog = _write_items(Path(items_file), item, tmp / f"{name}.item")
        card = make_card(source=str(src.path), fmt=src.describe(), columns=columns, time_order=time_order,
                         rows_read=n, dropped=dropped, users=ucodes[rows], items=icodes[rows],
                         seconds=seconds[rows] if seconds is not None else None, n_catalog=n_catalog)
        # Tabs / line breaks in ids become spaces (the .inter is a TSV); say how many, since
        # "a<TAB>b" and "a b" are now one id.
        touched = [int(pc.sum(pc.match_substring_regex(c, r"[\t\r\n]")).as_py() or 0) for c in out_cols[:2]]
        if any(touched):
            card["ids_with_tab_or_newline_made_spaces"] = {"user": touched[0], "item": touched[1]}
        (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        (tmp / "suggested.yaml").write_text(_suggested(Path(out_dir), name, seconds is not None, min_user_inter,
                                                       min_item_inter))
    return Path(out_dir) / name, card


def _write_items(path: Path, item: str | None, dest: Path) -> int:
    src = open_source(path, known=KNOWN)
    icol = resolve(src, item if item in src.names else None, ITEM_NAMES, "item id", "--item")
    if icol is None:
        raise DataError(str(path), f"no item id column (the file has: {', '.join(src.names)})", line=1,
                        hint="name the item column the same as in the events, or item_id")
    others = [c for c in src.names if c != icol]
    table = src.read([icol, *others])
    item_ids = ids(table.column(icol))  # the same missing-id rule as the events
    valid = np.flatnonzero(~item_ids.is_null().to_numpy(zero_copy_only=False))
    _, first_idx = np.unique(_codes(item_ids)[valid], return_index=True)  # one row per item id: its first
    rows = pa.array(np.sort(valid[first_idx]))
    header = ["item_id:token"]
    cols = [item_ids.take(rows)]
    for c in others:
        ftype, text = _field(table.column(c).combine_chunks().take(rows))
        header.append(f"{re.sub(r'[^0-9A-Za-z_]', '_', c.split(':')[0])}:{ftype}")
        cols.append(text)
    with open(dest, "wb") as f:
        f.write(("\t".join(header) + "\n").encode())
        _write_rows(f, cols)
    return len(rows)


def _suggested(out_dir: Path, name: str, has_time: bool, min_user: int, min_item: int) -> str:
    lines = [f"# Written by `mlconnect data import`: mlconnect train -c {out_dir / name / 'suggested.yaml'}",
             f"data_path: {json.dumps(str(out_dir))}", f"dataset: {json.dumps(name)}",
             "USER_ID_FIELD: user_id", "ITEM_ID_FIELD: item_id"]
    if has_time:
        lines.append("TIME_FIELD: timestamp")
    else:
        lines.append("# no time column: the file's row order is each user's time order")
    # The import already applied this filter; repeating it keeps the config honest about the data.
    lines.append(f"user_inter_num_interval: \"[{max(min_user, 0)},inf)\"")
    lines.append(f"item_inter_num_interval: \"[{max(min_item, 0)},inf)\"")
    return "\n".join(lines) + "\n"
