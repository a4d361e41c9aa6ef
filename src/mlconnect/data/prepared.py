"""Atomic files -> the preprocessed dataset: id maps and per-user, time-sorted item arrays.

The pipeline mirrors RecBole 1.2.1 for sequential models: duplicates removed (``rm_dup_inter``),
rows filtered by value (``val_interval``), users and items filtered by interaction count until
stable (``*_inter_num_interval``), ids remapped in order of first appearance (index 0 is
padding), interactions sorted stably by time within each user.

The result is a handful of flat arrays (``Prepared``): what the binary cache stores and memory-maps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlconnect.data.atomic import read_atomic_columns, read_atomic_file, read_header
from mlconnect.data.filters import EVERYTHING, Interval, dedup_mask, in_interval, kcore_mask
from mlconnect.errors import DataError


@dataclass(frozen=True)
class PrepKeys:
    """Every setting that changes the preprocessed result (and so the cache key)."""

    user_field: str = "user_id"
    item_field: str = "item_id"
    time_field: str | None = "timestamp"
    inter_cols: list[str] | None = None  # load_col.inter (None: user, item, time)
    item_cols: list[str] | None = None  # load_col.item (None: every column)
    field_sep: str = "\t"
    rm_dup: str | None = None
    val_interval: dict[str, list[Interval]] = field(default_factory=dict)
    user_iv: Interval = EVERYTHING
    item_iv: Interval = EVERYTHING
    normalise_time: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Prepared:
    """Interactions grouped by user (internal id u >= 1) in time order, plus the id maps.

    ``items[offsets[u]:offsets[u + 1]]`` are user u's internal item ids; ``offsets[0] == offsets[1]``
    (user 0 is padding). ``user_ids`` / ``item_ids`` hold the raw id of internal ids 1.. (no pad).
    """

    items: np.ndarray  # int32, flat
    offsets: np.ndarray  # int64, [n_users + 2]
    user_ids: pa.Array
    item_ids: pa.Array
    features: pa.Table | None = None  # the .item file's columns (item id first)
    feature_types: dict[str, str] = field(default_factory=dict)


def time_key(times: np.ndarray, normalise: bool) -> np.ndarray:
    """The time values RecBole actually sorts on.

    RecBole min-max normalises float fields (``normalize_all``, on by default) and stores them as
    float32 tensors, so timestamps about a second apart late in ml-100k's range compare equal and
    keep file order. Sorting on the same float32 key reproduces RecBole's sequences exactly.
    """
    if not (normalise and len(times)):
        return times.astype(np.float32)
    lo, hi = times.min(), times.max()
    out = np.zeros(len(times), dtype=np.float32)
    if hi > lo:
        for a in range(0, len(times), 1 << 20):  # in blocks: no float64 temporaries the size of the column
            out[a:a + (1 << 20)] = (times[a:a + (1 << 20)] - lo) / (hi - lo)
    return out


def _sortable(key: np.ndarray) -> np.ndarray:
    """float32 -> uint32 whose integer order is the float order (so one integer sort does both keys)."""
    bits = (key + np.float32(0.0)).view(np.uint32)  # + 0.0 turns -0.0 into 0.0
    return np.where(bits >> 31 == 1, ~bits, bits | np.uint32(0x80000000))


def _in_order(uid: np.ndarray, tkey: np.ndarray, by_user: bool) -> bool:
    """Rows already sorted by (user, time) (``by_user``) or by time alone; checked in blocks, so the
    check's temporaries stay small next to the columns."""
    step = 1 << 20
    for a in range(0, max(len(uid) - 1, 0), step):
        b = min(a + step, len(uid) - 1)
        t_ok = tkey[a + 1:b + 1] >= tkey[a:b]
        if by_user:
            du = uid[a + 1:b + 1] - uid[a:b]
            t_ok = (du > 0) | ((du == 0) & t_ok)
        if not t_ok.all():
            return False
    return True


def _user_time_order(uid: np.ndarray, tkey: np.ndarray) -> np.ndarray | None:
    """Stable order by (user, float32 time key), ties in file order as RecBole's sort; None when the
    rows already are in that order (files written user by user in time order need no sort at all)."""
    if _in_order(uid, tkey, by_user=True):
        return None
    if _in_order(uid, tkey, by_user=False):  # a log in global time order: sorting by user is enough
        return np.argsort(uid, kind="stable")
    # one stable integer sort on (user, time) packed into 64 bits
    return np.argsort((uid.astype(np.uint64) << np.uint64(32)) | _sortable(tkey), kind="stable")


def _release() -> None:
    """Hand the Arrow pool's freed pages back to the OS (mimalloc keeps them otherwise)."""
    pa.default_memory_pool().release_unused()


def _first_appearance(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes in order of first appearance, code -> 1-based rank): pandas.factorize order, as RecBole."""
    order = pc.unique(pa.array(codes)).to_numpy()  # hash-based, keeps first-appearance order
    rank = np.zeros(size, dtype=np.int32)
    rank[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return order, rank


def build(ddir: Path, name: str, keys: PrepKeys) -> Prepared:
    """Read ``<ddir>/<name>.inter`` (+ ``.item``) and apply RecBole's filters."""
    path = ddir / f"{name}.inter"
    ufield, ifield, tfield = keys.user_field, keys.item_field, keys.time_field
    names, types = read_header(path, keys.field_sep)
    for f in (ufield, ifield):
        if f not in names:
            raise DataError(str(path), f"no {f!r} column (set USER_ID_FIELD / ITEM_ID_FIELD)", line=1)
    has_time = bool(tfield) and tfield in names and (keys.inter_cols is None or tfield in keys.inter_cols)
    for f in keys.val_interval:
        if f not in names:
            raise DataError(str(path), f"val_interval names {f!r}, which the file does not have", line=1)
        if types[f] != "float":
            raise DataError(str(path), f"val_interval.{f}: only float fields can be filtered by value",
                            line=1, column=f)
    if has_time and types[tfield] != "float":  # type: ignore[index]
        raise DataError(str(path), f"TIME_FIELD {tfield!r} must have type float", line=1, column=tfield)
    base = keys.inter_cols if keys.inter_cols is not None else [ufield, ifield, *([tfield] if has_time else [])]
    want = list(dict.fromkeys([*base, *keys.val_interval]))
    # Streamed into NumPy block by block (no whole-file Arrow table): ids as int32 codes, times as float64.
    need = [ufield, ifield, *([tfield] if has_time else []), *keys.val_interval]
    data = read_atomic_columns(path, want, need, keys.field_sep, dictionary=(ufield, ifield))
    cols = data.arrays
    users, user_dict = cols.pop(ufield), data.dictionaries[ufield]
    items, item_dict = cols.pop(ifield), data.dictionaries[ifield]
    n = len(users)
    times = cols[tfield] if has_time else np.arange(n, dtype=np.float64)
    del data
    keep = np.ones(n, dtype=bool)
    if keys.rm_dup is not None:
        keep &= dedup_mask(users, items, times, keys.rm_dup)
    for f, ivs in keys.val_interval.items():
        vals = cols[f]
        ok = np.zeros(n, dtype=bool)
        for iv in ivs:
            ok |= in_interval(vals, iv)
        keep &= ok
    del cols
    _release()  # the reader's buffers go back before the sort
    keep = kcore_mask(users, items, keep, keys.user_iv, keys.item_iv)
    if not keep.all():
        users, items, times = users[keep], items[keep], times[keep]
    del keep
    if len(users) == 0:
        raise DataError(str(path), "no interactions left after filtering",
                        hint="loosen val_interval / *_inter_num_interval")
    user_order, user_rank = _first_appearance(users, len(user_dict))
    item_order, item_rank = _first_appearance(items, len(item_dict))
    uid = user_rank[users]
    del users
    tkey = time_key(times, keys.normalise_time)
    del times
    order = _user_time_order(uid, tkey)
    del tkey
    flat = item_rank[items if order is None else items[order]]
    del order, items
    counts = np.bincount(uid, minlength=len(user_order) + 1)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    features, ftypes = _item_features(ddir, name, keys)
    return Prepared(items=flat, offsets=offsets, user_ids=user_dict.take(pa.array(user_order)),
                    item_ids=item_dict.take(pa.array(item_order)), features=features, feature_types=ftypes)


def _item_features(ddir: Path, name: str, keys: PrepKeys) -> tuple[pa.Table | None, dict[str, str]]:
    path = ddir / f"{name}.item"
    if not path.is_file():
        return None, {}
    f = read_atomic_file(path, keys.item_cols, keys.field_sep)
    if keys.item_field not in f.types:
        raise DataError(str(path), f"no {keys.item_field!r} column", line=1)
    cols = [keys.item_field, *(c for c in f.types if c != keys.item_field)]
    return f.table.select(cols), {c: f.types[c] for c in cols}


class LazyFeatures(dict):  # type: ignore[type-arg]
    """``feature_dict`` built on first use: a 200k-item catalog costs ~100 MB of Python dicts that a
    training run only needs once (to write items.json), so loading does not pay for it up front."""

    def __init__(self, table: pa.Table | None, types: dict[str, str], item_field: str, seq_sep: str = " ") -> None:
        super().__init__()
        self._args: tuple[Any, ...] | None = (table, types, item_field, seq_sep)

    def _load(self) -> LazyFeatures:
        if self._args is not None:
            args, self._args = self._args, None
            dict.update(self, feature_dict(*args))
        return self

    def __getitem__(self, k: str) -> dict[str, Any]:
        return dict.__getitem__(self._load(), k)

    def __contains__(self, k: object) -> bool:
        return dict.__contains__(self._load(), k)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return dict.__iter__(self._load())

    def __len__(self) -> int:
        return dict.__len__(self._load())

    def __eq__(self, other: object) -> bool:
        return dict.__eq__(self._load(), other._load() if isinstance(other, LazyFeatures) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return dict.__repr__(self._load())

    def get(self, k: str, default: Any = None) -> Any:
        return dict.get(self._load(), k, default)

    def keys(self):  # type: ignore[no-untyped-def]
        return dict.keys(self._load())

    def items(self):  # type: ignore[no-untyped-def]
        return dict.items(self._load())

    def values(self):  # type: ignore[no-untyped-def]
        return dict.values(self._load())


def feature_dict(table: pa.Table | None, types: dict[str, str], item_field: str,
                 seq_sep: str = " ") -> dict[str, dict[str, Any]]:
    """raw item id -> {field: value} (token_seq as one string, float_seq as a list of floats)."""
    if table is None:
        return {}
    others = [c for c in table.column_names if c != item_field]
    values = {c: table.column(c).to_pylist() for c in others}
    out: dict[str, dict[str, Any]] = {}
    for row, iid in enumerate(table.column(item_field).to_pylist()):
        rec: dict[str, Any] = {}
        for c in others:
            v = values[c][row]
            if types[c] == "token_seq":
                v = " ".join(v.split(seq_sep)) if v else ""
            elif types[c] == "float_seq":
                v = [float(x) for x in v.split(seq_sep)] if v else []
            rec[c] = v
        out[iid] = rec
    return out
