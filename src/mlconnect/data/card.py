"""The dataset card: what an import read, kept and dropped (and why), and the shape of the result.

Written as ``card.json`` beside the atomic files and printed as a two-column table.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def make_card(*, source: str, fmt: str, columns: dict[str, str | None], time_order: str, rows_read: int,
              dropped: dict[str, int], users: np.ndarray, items: np.ndarray, seconds: np.ndarray | None,
              n_catalog: int | None = None) -> dict[str, Any]:
    """The card of the kept interactions (``users`` / ``items`` are integer codes, one per kept row)."""
    n = len(users)
    counts = np.bincount(users) if n else np.zeros(0, dtype=np.int64)
    lengths = counts[counts > 0]
    n_users, n_items = len(lengths), int(np.count_nonzero(np.bincount(items))) if n else 0
    card: dict[str, Any] = {
        "source": source, "format": fmt, "columns": columns, "time_order": time_order,
        "rows_read": rows_read, "rows_kept": n, "rows_dropped": sum(dropped.values()),
        "dropped": {k: v for k, v in dropped.items() if v},
        "users": n_users, "items": n_items,
        "sparsity": round(1.0 - n / (n_users * n_items), 6) if n_users and n_items else None,
    }
    if n_catalog is not None:
        card["items_in_item_file"] = n_catalog
    if seconds is not None and n:
        lo, hi = float(np.nanmin(seconds)), float(np.nanmax(seconds))
        card["time_span"] = {"first": _iso(lo), "last": _iso(hi), "days": round((hi - lo) / 86400, 2)}
    if n:
        pct = np.percentile(lengths, [5, 25, 50, 75, 95, 99])
        card["sequence_length"] = {"min": int(lengths.min()), **{f"p{p}": float(v) for p, v in
                                   zip((5, 25, 50, 75, 95, 99), pct)}, "max": int(lengths.max()),
                                   "mean": round(float(lengths.mean()), 2)}
    return card


def card_rows(card: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs for printing the card as a table."""
    cols = ", ".join(f"{k}={v}" for k, v in card["columns"].items() if v is not None)
    rows = [("source", f"{card['source']} ({card['format']})"), ("columns", cols),
            ("time order", card["time_order"]), ("rows read", f"{card['rows_read']:,}"),
            ("rows kept", f"{card['rows_kept']:,}"), ("rows dropped", f"{card['rows_dropped']:,}")]
    rows += [(f"  {why}", f"{n:,}") for why, n in card["dropped"].items()]
    rows += [("users", f"{card['users']:,}"), ("items", f"{card['items']:,}")]
    if card.get("sparsity") is not None:
        rows.append(("sparsity", f"{card['sparsity']:.4%}"))
    if "items_in_item_file" in card:
        rows.append(("items in item file", f"{card['items_in_item_file']:,}"))
    if "ids_with_tab_or_newline_made_spaces" in card:
        n = card["ids_with_tab_or_newline_made_spaces"]
        rows.append(("ids: tab/newline -> space", f"{n['user']:,} user rows, {n['item']:,} item rows"))
    if "time_span" in card:
        span = card["time_span"]
        rows.append(("time span", f"{span['first']} .. {span['last']} ({span['days']:,} days)"))
    if "sequence_length" in card:
        s = card["sequence_length"]
        rows.append(("sequence length", f"min {s['min']}, p25 {s['p25']:g}, median {s['p50']:g}, p75 {s['p75']:g}, "
                                        f"p95 {s['p95']:g}, max {s['max']}, mean {s['mean']:g}"))
    return rows
