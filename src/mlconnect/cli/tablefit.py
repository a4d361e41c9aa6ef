"""Fit a table to the terminal instead of cutting every cell to "ba…".

One helper for every table people read (``ls``, ``ps``, ``compare``, later ``sweep status``); ``--json``
never goes through it and stays complete. When the natural table is wider than the terminal:

1. few rows and ``transpose`` allowed (``compare``): fields become rows, one column per experiment;
2. else columns whose value is the same in every row are dropped, and one line says what they held;
3. else columns are kept from the left (the ``key`` column always) while they fit, and one line names
   the ones left out.

Pure: strings in, strings out; ``cli.common.print_table`` renders the result with rich.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.cells import cell_len

TRANSPOSE_MAX_ROWS = 8  # beyond this a transposed table is as wide as the original
FIELD = "field"  # the first column's header when transposed


@dataclass
class Fitted:
    columns: list[str]
    rows: list[dict[str, str]]
    notes: list[str] = field(default_factory=list)  # what was left out or reshaped, for a line under the table


def table_width(rows: list[dict[str, str]], columns: list[str]) -> int:
    """The width rich's default box draws: each column's widest cell + 2 padding + 1 rule, + 1 rule."""
    widths = [max([cell_len(c)] + [cell_len(r.get(c, "")) for r in rows]) for c in columns]
    return sum(widths) + 3 * len(columns) + 1


def transpose(rows: list[dict[str, str]], columns: list[str], key: str) -> tuple[list[dict[str, str]], list[str]]:
    """Fields as rows, one column per row of the original, headed by its ``key`` value."""
    heads: list[str] = []
    for r in rows:
        head, n = r.get(key, "") or "-", 2
        while head in heads or head == FIELD:  # two runs with one name would share a column
            head = f"{r.get(key, '')}#{n}"
            n += 1
        heads.append(head)
    out = [{FIELD: c, **{h: r.get(c, "") for h, r in zip(heads, rows)}} for c in columns if c != key]
    return out, [FIELD, *heads]


def fit_table(rows: list[dict[str, str]], columns: list[str], width: int, *, key: str | None = None,
              allow_transpose: bool = False) -> Fitted:
    """The table to print within ``width`` columns (see the module docstring for the order of tries)."""
    if not rows or table_width(rows, columns) <= width:
        return Fitted(list(columns), rows)
    key = key if key in columns else columns[0]
    if allow_transpose and len(rows) <= TRANSPOSE_MAX_ROWS:
        t_rows, t_cols = transpose(rows, columns, key)
        if table_width(t_rows, t_cols) <= width:
            return Fitted(t_cols, t_rows, [f"(transposed to fit {width} columns)"])
    notes: list[str] = []
    kept = list(columns)
    if len(rows) >= 2:
        same = [c for c in columns if c != key and len({r.get(c, "") for r in rows}) == 1]
        if same:
            kept = [c for c in columns if c not in same]
            notes.append("same in every row: " + ", ".join(f"{c}={rows[0].get(c, '')}" for c in same))
            if table_width(rows, kept) <= width:
                return Fitted(kept, rows, notes)
    chosen = [key]
    for c in kept:
        if c != key and table_width(rows, [*chosen, c]) <= width:
            chosen.append(c)
    left_out = [c for c in kept if c not in chosen]
    if left_out:
        notes.append(f"left out to fit {width} columns: {', '.join(left_out)} (a wider terminal or --json "
                     "shows them)")
    return Fitted([c for c in kept if c in chosen], rows, notes)
