"""RecBole atomic files -> id maps -> per-user sequences -> RecBole's leave-one-out split.

The pipeline mirrors RecBole 1.2.1 for sequential models:
duplicates removed (``rm_dup_inter``), rows filtered by value (``val_interval``), users and items
filtered by interaction count until stable (``*_inter_num_interval``), ids remapped in order of
first appearance (index 0 is padding), interactions sorted stably by time within each user.
The split (``eval_args: {split: {LS: valid_and_test}, order: TO}``) takes each user's last item as
the test target and the one before as the valid target; the first item is never a target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlconnect.engine.config import Config, parse_interval
from mlconnect.errors import ConfigError, DataError

FIELD_TYPES = ("token", "float", "token_seq", "float_seq")
PAD = "[PAD]"


@dataclass
class AtomicFile:
    """One parsed atomic file: column name -> raw values (str, float, or lists of them)."""

    path: Path
    types: dict[str, str]
    columns: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


def read_atomic_file(path: Path, load: list[str] | None, field_sep: str = "\t", seq_sep: str = " ") -> AtomicFile:
    """Parse ``name:type`` headed columns; errors name the file, line and column."""
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline()
            if not header.strip():
                raise DataError(str(path), "the file is empty (expected a header like user_id:token)", line=1)
            names, types = [], {}
            for col in header.rstrip("\r\n").split(field_sep):
                name, sep, ftype = col.partition(":")
                if not sep or not name:
                    raise DataError(str(path), f"header column {col!r} has no type (write it as name:token, "
                                    f"name:float, name:token_seq or name:float_seq)", line=1, column=col)
                if ftype not in FIELD_TYPES:
                    raise DataError(str(path), f"unknown type {ftype!r} (use one of {', '.join(FIELD_TYPES)})",
                                    line=1, column=name)
                names.append(name)
                types[name] = ftype
            wanted = names if load is None else list(load)
            for name in wanted:
                if name not in types:
                    raise DataError(str(path), f"load_col asks for field {name!r}, which the file does not have "
                                    f"(it has: {', '.join(names)})", line=1, column=name,
                                    hint="fix load_col in the config or the file's header")
            idx = [names.index(n) for n in wanted]
            cols: list[list[Any]] = [[] for _ in wanted]
            ncols = len(names)
            for lineno, line in enumerate(f, start=2):
                line = line.rstrip("\r\n")
                if not line:
                    continue
                parts = line.split(field_sep)
                if len(parts) != ncols:
                    raise DataError(str(path), f"expected {ncols} columns, found {len(parts)}", line=lineno)
                for out, i in zip(cols, idx):
                    out.append(parts[i])
    except UnicodeDecodeError as exc:
        raise DataError(str(path), f"not UTF-8 text ({exc.reason})") from None
    columns: dict[str, list[Any]] = {}
    for name, raw in zip(wanted, cols):
        columns[name] = _convert(path, name, types[name], raw, seq_sep)
    if not columns or not len(next(iter(columns.values()))):
        raise DataError(str(path), "the file has a header but no rows", line=2)
    return AtomicFile(path, {n: types[n] for n in wanted}, columns)


def _convert(path: Path, name: str, ftype: str, raw: list[str], seq_sep: str) -> list[Any]:
    if ftype == "token":
        return raw
    if ftype == "token_seq":
        return [r.split(seq_sep) if r else [] for r in raw]
    if ftype == "float":
        try:
            return np.asarray(raw, dtype=np.float64).tolist() if raw else []
        except ValueError:
            for i, r in enumerate(raw):
                try:
                    float(r)
                except ValueError:
                    raise DataError(str(path), f"{r!r} is not a number", line=i + 2, column=name) from None
            raise
    out = []
    for i, r in enumerate(raw):  # float_seq
        try:
            out.append([float(x) for x in r.split(seq_sep)] if r else [])
        except ValueError:
            raise DataError(str(path), f"{r!r} is not a list of numbers", line=i + 2, column=name) from None
    return out


@dataclass
class Dataset:
    """Interactions as per-user item sequences, in time order, with id maps (index 0 = padding)."""

    name: str
    item_ids: list[str]  # internal id -> raw id; item_ids[0] == "[PAD]"
    user_ids: list[str]  # internal id -> raw id; user_ids[0] == "[PAD]"
    sequences: list[np.ndarray]  # sequences[u] = item ids of user u in time order (sequences[0] empty)
    item_features: dict[str, dict[str, Any]] = field(default_factory=dict)  # raw item id -> fields
    user_field: str = "user_id"
    item_field: str = "item_id"

    @property
    def n_items(self) -> int:
        """Number of item ids including padding (the embedding table size)."""
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids) - 1

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))


def load_dataset(cfg: Config) -> Dataset:
    """Read ``<data_path>/<dataset>/<dataset>.inter`` (+ ``.item``) and apply RecBole's filters."""
    ddir = cfg.dataset_dir
    name = cfg["dataset"]
    inter_path = ddir / f"{name}.inter"
    if not inter_path.is_file():
        raise DataError(str(inter_path), "interaction file not found",
                        hint=f"check data_path ({cfg['data_path']}) and dataset ({name}), or run "
                             "`mlconnect data import-movielens` / `mlconnect data synth`")
    ufield, ifield, tfield = cfg["USER_ID_FIELD"], cfg["ITEM_ID_FIELD"], cfg["TIME_FIELD"]
    load_col = cfg["load_col"] or {}
    inter_cols = list(load_col.get("inter", [])) or None
    val_fields = list((cfg["val_interval"] or {}).keys())
    if inter_cols is not None:
        missing = [f for f in (ufield, ifield) if f not in inter_cols]
        if tfield and tfield not in inter_cols:
            missing.append(tfield)
        if missing:
            raise ConfigError([f"load_col.inter must include {', '.join(missing)} (user, item and time "
                               "fields are needed for sequential models)"])
        want = list(dict.fromkeys(inter_cols + val_fields))
    else:
        want = None
    inter = read_atomic_file(inter_path, want, cfg["field_separator"], cfg["seq_separator"])
    for f in (ufield, ifield):
        if f not in inter.columns:
            raise DataError(str(inter_path), f"no {f!r} column (set USER_ID_FIELD / ITEM_ID_FIELD)", line=1)
    for f in val_fields:
        if f not in inter.columns:
            raise DataError(str(inter_path), f"val_interval names {f!r}, which the file does not have", line=1)
    users = np.asarray(inter.columns[ufield], dtype=object)
    items = np.asarray(inter.columns[ifield], dtype=object)
    if tfield and tfield in inter.columns:
        if inter.types[tfield] != "float":
            raise DataError(str(inter_path), f"TIME_FIELD {tfield!r} must have type float", line=1, column=tfield)
        times = np.asarray(inter.columns[tfield], dtype=np.float64)
    else:  # no time column: file order is the order
        times = np.arange(len(users), dtype=np.float64)
    keep = np.ones(len(users), dtype=bool)

    if cfg["rm_dup_inter"] is not None:
        keep &= _first_or_last_mask(users, items, times, cfg["rm_dup_inter"])
    for f, iv in (cfg["val_interval"] or {}).items():
        if inter.types[f] != "float":
            raise ConfigError([f"val_interval.{f}: only float fields can be filtered by value"])
        vals = np.asarray(inter.columns[f], dtype=np.float64)
        ok = np.zeros(len(vals), dtype=bool)
        for one in iv if isinstance(iv, list) else [iv]:
            ok |= _in_interval(vals, one)
        keep &= ok
    keep = _filter_by_counts(users, items, keep, cfg["user_inter_num_interval"], cfg["item_inter_num_interval"])

    users, items, times = users[keep], items[keep], times[keep]
    if len(users) == 0:
        raise DataError(str(inter_path), "no interactions left after filtering",
                        hint="loosen val_interval / *_inter_num_interval")
    # Ids in order of first appearance, as RecBole's remapping (pandas.factorize) does.
    user_raw, user_idx = _factorize(users)
    item_raw, item_idx = _factorize(items)
    # Stable sort by time, then stable by user; ties keep file order, as RecBole's sort does.
    order = np.argsort(recbole_time_key(times, cfg, tfield), kind="stable")
    order = order[np.argsort(user_idx[order], kind="stable")]
    su, si = user_idx[order], item_idx[order] + 1
    bounds = np.flatnonzero(np.diff(su)) + 1
    seqs = [np.empty(0, dtype=np.int64)] + [s.astype(np.int64) for s in np.split(si, bounds)]
    item_features = _read_item_features(cfg, ddir, name, ifield)
    return Dataset(name=name, item_ids=[PAD, *item_raw], user_ids=[PAD, *user_raw], sequences=seqs,
                   item_features=item_features, user_field=ufield, item_field=ifield)


def recbole_time_key(times: np.ndarray, cfg: Config, tfield: str) -> np.ndarray:
    """The time values RecBole actually sorts on.

    RecBole min-max normalises float fields (``normalize_all``, on by default) and stores them as
    float32 tensors, so timestamps about a second apart late in ml-100k's range compare equal and
    keep file order. Sorting on the same float32 key reproduces RecBole's sequences exactly.
    """
    nf = cfg["normalize_field"]
    normalise = tfield in nf if nf else bool(cfg["normalize_all"])
    if normalise and len(times):
        lo, hi = times.min(), times.max()
        times = (times - lo) / (hi - lo) if hi > lo else np.zeros_like(times)
    return times.astype(np.float32)


def _factorize(values: np.ndarray) -> tuple[list[str], np.ndarray]:
    uniq, first, inverse = np.unique(values.astype(str), return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    by_first = np.argsort(first, kind="stable")
    rank[by_first] = np.arange(len(uniq))
    return [str(u) for u in uniq[by_first]], rank[inverse]


def _first_or_last_mask(users: np.ndarray, items: np.ndarray, times: np.ndarray, keep: str) -> np.ndarray:
    order = np.argsort(times, kind="stable")
    if keep == "last":
        order = order[::-1]
    seen: set[tuple[str, str]] = set()
    mask = np.zeros(len(users), dtype=bool)
    for i in order:
        key = (users[i], items[i])
        if key not in seen:
            seen.add(key)
            mask[i] = True
    return mask


def _in_interval(vals: np.ndarray, text: str) -> np.ndarray:
    low, high, lo_inc, hi_inc = parse_interval(text)
    lo_ok = vals >= low if lo_inc else vals > low
    hi_ok = vals <= high if hi_inc else vals < high
    return lo_ok & hi_ok


def _filter_by_counts(users: np.ndarray, items: np.ndarray, keep: np.ndarray, u_iv: str, i_iv: str) -> np.ndarray:
    """Drop users and items outside their count intervals, repeatedly, until nothing changes."""
    if parse_interval(u_iv)[:2] == (0.0, math.inf) and parse_interval(i_iv)[:2] == (0.0, math.inf):
        return keep
    _, u_idx = np.unique(users.astype(str), return_inverse=True)
    _, i_idx = np.unique(items.astype(str), return_inverse=True)
    keep = keep.copy()
    while True:
        u_cnt = np.bincount(u_idx[keep], minlength=u_idx.max() + 1)
        i_cnt = np.bincount(i_idx[keep], minlength=i_idx.max() + 1)
        u_ok = _in_interval(u_cnt[u_idx].astype(np.float64), u_iv)
        bad = ~u_ok | ~_in_interval(i_cnt[i_idx].astype(np.float64), i_iv)
        drop = keep & bad
        if not drop.any():
            return keep
        keep &= ~drop


def _read_item_features(cfg: Config, ddir: Path, name: str, ifield: str) -> dict[str, dict[str, Any]]:
    path = ddir / f"{name}.item"
    if not path.is_file():
        return {}
    load_col = cfg["load_col"] or {}
    cols = load_col.get("item")
    f = read_atomic_file(path, list(cols) if cols else None, cfg["field_separator"], cfg["seq_separator"])
    if ifield not in f.columns:
        raise DataError(str(path), f"no {ifield!r} column", line=1)
    others = [c for c in f.columns if c != ifield]
    out: dict[str, dict[str, Any]] = {}
    for row, iid in enumerate(f.columns[ifield]):
        rec = {}
        for c in others:
            v = f.columns[c][row]
            rec[c] = " ".join(v) if f.types[c] == "token_seq" else v
        out[iid] = rec
    return out


@dataclass
class Split:
    """RecBole's LS valid_and_test split, per user (arrays of internal item ids).

    ``train[u]`` is the whole training sequence; the valid input is its last ``max_len`` items and
    the test input the last ``max_len`` items of ``train[u] + [valid[u]]``. Users with fewer than
    three interactions are skipped for evaluation (RecBole gives them no valid/test row).
    """

    train: list[np.ndarray]
    valid_target: np.ndarray  # [n_users + 1], 0 where the user has no valid row
    test_target: np.ndarray
    max_len: int

    def eval_inputs(self, which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users, input matrix [n, max_len] right-padded with 0, targets) for ``valid`` or ``test``."""
        target = self.valid_target if which == "valid" else self.test_target
        users = np.flatnonzero(target)
        x = np.zeros((len(users), self.max_len), dtype=np.int64)
        for row, u in enumerate(users):
            hist = self.train[u] if which == "valid" else np.append(self.train[u], self.valid_target[u])
            tail = hist[-self.max_len:]
            x[row, : len(tail)] = tail
        return users, x, target[users]

    def history(self, which: str, u: int) -> np.ndarray:
        return self.train[u] if which == "valid" else np.append(self.train[u], self.valid_target[u])


def split_leave_one_out(ds: Dataset, max_len: int) -> Split:
    """Last item -> test, second to last -> valid, the rest -> train (the first item is never a target)."""
    n = len(ds.sequences)
    valid_t = np.zeros(n, dtype=np.int64)
    test_t = np.zeros(n, dtype=np.int64)
    train: list[np.ndarray] = []
    for u, seq in enumerate(ds.sequences):
        # RecBole's augmentation gives a user with n interactions n-1 target rows; leave-one-out
        # takes the last row as test and the one before as valid, when there are enough rows.
        rows = len(seq) - 1
        if rows >= 2:
            train.append(seq[:-2])
            valid_t[u], test_t[u] = seq[-2], seq[-1]
        elif rows == 1:
            train.append(seq[:-1])
            test_t[u] = seq[-1]
        else:
            train.append(seq)
    return Split(train=train, valid_target=valid_t, test_target=test_t, max_len=max_len)


def training_windows(train: list[np.ndarray], max_len: int,
                     stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cut each training sequence into ``(inputs, targets)`` windows of ``max_len``, right-padded with 0.

    ``targets[r, j]`` is the item after ``inputs[r, j]``; the loss is taken at every position whose
    target is not 0, and every training interaction after a user's first is a target exactly once.
    Windows are laid from the end of each sequence backwards, ``stride`` targets apart (default
    ``max_len``: no overlap). A smaller stride overlaps the windows so each target is predicted
    from at least ``max_len - stride + 1`` earlier items (RecBole's one-row-per-prefix gives every
    target the full ``max_len``, at ``max_len`` times the cost); targets another window already
    covers are set to 0 there.
    """
    stride = min(stride or max_len, max_len)
    inputs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for seq in train:
        end = len(seq)  # this window's targets are the positions [end - stride, end)
        while end >= 2:
            start = max(0, end - 1 - max_len)  # first input position
            x = np.zeros(max_len, dtype=np.int64)
            y = np.zeros(max_len, dtype=np.int64)
            x[: end - 1 - start] = seq[start:end - 1]
            y[: end - 1 - start] = seq[start + 1:end]
            first_target = max(1, end - stride)
            y[: first_target - start - 1] = 0  # earlier targets belong to the next window back
            inputs.append(x)
            targets.append(y)
            end = first_target
    if not inputs:
        empty = np.zeros((0, max_len), dtype=np.int64)
        return empty, empty.copy()
    return np.stack(inputs), np.stack(targets)
