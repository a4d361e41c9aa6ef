"""Row filters shared by the loader and ``data import``: duplicates, value intervals, k-core counts.

All of them work on integer codes (users and items already factorized), so a 10M-row log is a few
vectorised numpy passes, never a Python loop over rows. Intervals come parsed, as
``(low, high, low_inclusive, high_inclusive)`` (``engine.config.parse_interval`` reads the text).
"""

from __future__ import annotations

import math

import numpy as np

Interval = tuple[float, float, bool, bool]
EVERYTHING: Interval = (0.0, math.inf, True, True)


def in_interval(vals: np.ndarray, iv: Interval) -> np.ndarray:
    low, high, lo_inc, hi_inc = iv
    lo_ok = vals >= low if lo_inc else vals > low
    hi_ok = vals <= high if hi_inc else vals < high
    return lo_ok & hi_ok


def pair_keys(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """One int64 per (user code, item code) pair."""
    return users.astype(np.int64) * (int(items.max(initial=0)) + 1) + items


def first_of_each(keys: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Mask of the rows that are the first, in ``order``, of their key."""
    _, first = np.unique(keys[order], return_index=True)
    mask = np.zeros(len(keys), dtype=bool)
    mask[order[first]] = True
    return mask


def dedup_mask(users: np.ndarray, items: np.ndarray, times: np.ndarray, keep: str) -> np.ndarray:
    """RecBole's ``rm_dup_inter``: one row per (user, item), the earliest (``first``) or latest (``last``).

    Ties in time keep file order for ``first`` and reverse file order for ``last``, as RecBole's
    stable sort does.
    """
    order = np.argsort(times, kind="stable")
    if keep == "last":
        order = order[::-1]
    return first_of_each(pair_keys(users, items), order)


def kcore_mask(users: np.ndarray, items: np.ndarray, keep: np.ndarray,
               user_iv: Interval = EVERYTHING, item_iv: Interval = EVERYTHING) -> np.ndarray:
    """Drop users and items outside their count intervals, repeatedly, until nothing changes.

    ``users`` / ``items`` are non-negative integer codes; ``keep`` is the mask so far (not modified).
    """
    if user_iv[:2] == EVERYTHING[:2] and item_iv[:2] == EVERYTHING[:2]:
        return keep
    keep = keep.copy()
    n_u, n_i = int(users.max(initial=0)) + 1, int(items.max(initial=0)) + 1
    while True:
        u_ok = in_interval(np.bincount(users[keep], minlength=n_u).astype(np.float64), user_iv)
        i_ok = in_interval(np.bincount(items[keep], minlength=n_i).astype(np.float64), item_iv)
        drop = keep & ~(u_ok[users] & i_ok[items])
        if not drop.any():
            return keep
        keep &= ~drop
