"""Atomic files -> id maps -> per-user sequences -> RecBole's leave-one-out split -> training windows.

Reading and preprocessing live in ``mlconnect.data`` (pyarrow reader, RecBole's filters, the binary
cache next to the data); this module turns the config into those settings and holds what the
trainer consumes. Sequences are one flat int32 array plus offsets (``Ragged``), memory-mapped from
the cache when there is one, so a 10M-interaction dataset costs tens of bytes per interaction.
The split (``eval_args: {split: {LS: valid_and_test}, order: TO}``) takes each user's last item as
the test target and the one before as the valid target; the first item is never a target.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlconnect.data import cache
from mlconnect.data.prepared import LazyFeatures, Prepared, PrepKeys, build, time_key
from mlconnect.engine.config import Config, parse_interval
from mlconnect.errors import ConfigError, DataError

PAD = "[PAD]"
WINDOW_CHUNK = 1 << 14  # windows gathered per step: bounds the int64 index temporaries


class Ragged(Sequence[np.ndarray]):
    """A list of 1-d arrays stored as one flat array: ``r[u]`` is ``flat[starts[u]:starts[u] + lengths[u]]``."""

    def __init__(self, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> None:
        self.flat, self.starts, self.lengths = flat, np.asarray(starts), np.asarray(lengths)

    @classmethod
    def from_offsets(cls, flat: np.ndarray, offsets: np.ndarray) -> Ragged:
        return cls(flat, offsets[:-1], np.diff(offsets))

    @classmethod
    def from_list(cls, arrays: Sequence[np.ndarray]) -> Ragged:
        if isinstance(arrays, Ragged):
            return arrays
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        flat = np.concatenate([np.asarray(a, dtype=np.int64) for a in arrays]) if len(arrays) else np.zeros(0, np.int64)
        return cls(flat, starts, lengths)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, u: int) -> np.ndarray:  # type: ignore[override]
        if isinstance(u, slice):
            raise TypeError("Ragged supports integer indexing only")
        s = int(self.starts[u])
        return self.flat[s:s + int(self.lengths[u])]

    def __iter__(self) -> Iterator[np.ndarray]:
        for s, n in zip(self.starts.tolist(), self.lengths.tolist()):
            yield self.flat[s:s + n]

    def gather(self, rows: np.ndarray, ends: np.ndarray, width: int, take: np.ndarray | None = None,
               skip: np.ndarray | None = None) -> np.ndarray:
        """[len(rows), width] int64 rows: the ``take[k]`` items (default: as many as fit) before
        position ``ends[k]`` of ``self[rows[k]]``, left-aligned, right-padded with 0, the first
        ``skip[k]`` of them set to 0. Positions may run past ``lengths`` into the flat array."""
        out = np.zeros((len(rows), width), dtype=np.int64)
        if not len(rows) or not len(self.flat):
            return out
        take = np.minimum(ends, width) if take is None else take
        first = self.starts[rows] + ends - take
        # Each row is a slice of the flat array: read it through a sliding-window view (no index
        # matrix), then blank what is not part of the row. Only a block that runs off the end of
        # the flat array pays for explicit indices.
        n_flat = len(self.flat)
        view = np.lib.stride_tricks.sliding_window_view(self.flat, width) if n_flat >= width else None
        pos = np.arange(width)[None, :]
        for a in range(0, len(rows), WINDOW_CHUNK):
            b = min(a + WINDOW_CHUNK, len(rows))
            f = first[a:b]
            valid = pos < take[a:b, None]
            if skip is not None:
                valid &= pos >= skip[a:b, None]
            if view is not None and int(f.max()) + width <= n_flat:
                vals = view[f]
            else:
                vals = self.flat[np.minimum(f[:, None] + pos, n_flat - 1)]
            out[a:b] = np.where(valid, vals, 0)
        return out

@dataclass
class Dataset:
    """Interactions as per-user item sequences, in time order, with id maps (index 0 = padding)."""

    name: str
    item_ids: list[str]  # internal id -> raw id; item_ids[0] == "[PAD]"
    user_ids: list[str]  # internal id -> raw id; user_ids[0] == "[PAD]"
    sequences: Sequence[np.ndarray]  # sequences[u] = item ids of user u in time order (sequences[0] empty)
    item_features: dict[str, dict[str, Any]] = field(default_factory=dict)  # raw item id -> fields
    user_field: str = "user_id"
    item_field: str = "item_id"
    source: str = ""  # how the data was obtained: "cached", "built", "built, not cached: <why>"

    @property
    def n_items(self) -> int:
        """Number of item ids including padding (the embedding table size)."""
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids) - 1

    @property
    def n_interactions(self) -> int:
        if isinstance(self.sequences, Ragged):
            return int(self.sequences.lengths.sum())
        return int(sum(len(s) for s in self.sequences))


def prep_keys(cfg: Config) -> PrepKeys:
    """The config keys that change preprocessing, parsed (they key the cache too)."""
    ufield, ifield, tfield = cfg["USER_ID_FIELD"], cfg["ITEM_ID_FIELD"], cfg["TIME_FIELD"]
    load_col = cfg["load_col"] or {}
    inter_cols = list(load_col.get("inter", [])) or None
    if inter_cols is not None:
        missing = [f for f in (ufield, ifield) if f not in inter_cols]
        if tfield and tfield not in inter_cols:
            missing.append(tfield)
        if missing:
            raise ConfigError([f"load_col.inter must include {', '.join(missing)} (user, item and time "
                               "fields are needed for sequential models)"])
    item_cols = load_col.get("item")
    nf = cfg["normalize_field"]
    val = {f: [parse_interval(one) for one in (iv if isinstance(iv, list) else [iv])]
           for f, iv in (cfg["val_interval"] or {}).items()}
    return PrepKeys(user_field=ufield, item_field=ifield, time_field=tfield or None, inter_cols=inter_cols,
                    item_cols=list(item_cols) if item_cols else None, field_sep=cfg["field_separator"],
                    rm_dup=cfg["rm_dup_inter"], val_interval=val,
                    user_iv=parse_interval(cfg["user_inter_num_interval"]),
                    item_iv=parse_interval(cfg["item_inter_num_interval"]),
                    normalise_time=bool(tfield in nf) if nf else bool(cfg["normalize_all"]))


def load_dataset(cfg: Config) -> Dataset:
    """Read ``<data_path>/<dataset>/<dataset>.inter`` (+ ``.item``) with RecBole's filters, through the cache."""
    ddir = cfg.dataset_dir
    name = cfg["dataset"]
    inter_path = ddir / f"{name}.inter"
    if not inter_path.is_file():
        raise DataError(str(inter_path), "interaction file not found",
                        hint=f"check data_path ({cfg['data_path']}) and dataset ({name}), or run "
                             "`mlconnect data import` / `data import-movielens` / `data synth`")
    keys = prep_keys(cfg)
    prepared, how = cache.load_or_build(ddir, name, keys, lambda: build(ddir, name, keys))
    return to_dataset(name, prepared, keys, cfg["seq_separator"], how)


def to_dataset(name: str, p: Prepared, keys: PrepKeys, seq_sep: str = " ", source: str = "") -> Dataset:
    return Dataset(name=name, item_ids=[PAD, *p.item_ids.to_pylist()], user_ids=[PAD, *p.user_ids.to_pylist()],
                   sequences=Ragged.from_offsets(p.items, p.offsets),
                   item_features=LazyFeatures(p.features, p.feature_types, keys.item_field, seq_sep),
                   user_field=keys.user_field, item_field=keys.item_field, source=source)


def recbole_time_key(times: np.ndarray, cfg: Config, tfield: str) -> np.ndarray:
    """The float32 time values RecBole sorts on (see ``mlconnect.data.prepared.time_key``)."""
    nf = cfg["normalize_field"]
    return time_key(times, tfield in nf if nf else bool(cfg["normalize_all"]))


@dataclass
class Split:
    """RecBole's LS valid_and_test split, per user (arrays of internal item ids).

    ``train[u]`` is the whole training sequence; the valid input is its last ``max_len`` items and
    the test input the last ``max_len`` items of ``train[u] + [valid[u]]``. As in RecBole, a user needs
    four interactions for a valid row and three for a test row; fewer only train.
    ``train`` is a view into the dataset's flat array: the valid target follows it there.
    """

    train: Sequence[np.ndarray]
    valid_target: np.ndarray  # [n_users + 1], 0 where the user has no valid row
    test_target: np.ndarray
    max_len: int

    def eval_inputs(self, which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users, input matrix [n, max_len] right-padded with 0, targets) for ``valid`` or ``test``."""
        target = self.valid_target if which == "valid" else self.test_target
        users = np.flatnonzero(target)
        train = self.train if isinstance(self.train, Ragged) else Ragged.from_list(self.train)
        ends = train.lengths[users]
        if which != "valid":
            ends = ends + (self.valid_target[users] > 0)
        if isinstance(self.train, Ragged) or which == "valid":
            return users, train.gather(users, ends, self.max_len), target[users]
        x = np.zeros((len(users), self.max_len), dtype=np.int64)
        for row, u in enumerate(users):
            tail = self.history(which, int(u))[-self.max_len:]
            x[row, : len(tail)] = tail
        return users, x, target[users]

    def history(self, which: str, u: int) -> np.ndarray:
        if which == "valid" or not self.valid_target[u]:
            return np.asarray(self.train[u])
        return np.append(self.train[u], self.valid_target[u])


def split_leave_one_out(ds: Dataset, max_len: int) -> Split:
    """Last item -> test, second to last -> valid, the rest -> train (the first item is never a target)."""
    seqs = Ragged.from_list(ds.sequences)
    n_rows = seqs.lengths - 1
    # RecBole's augmentation gives a user with n interactions n-1 target rows; its leave-one-out keeps
    # min(2, rows - 1) of them for evaluation (Dataset._split_index_by_leave_one_out): 3+ rows give a valid
    # and a test row, 2 rows a test row only, 1 row a training row only.
    train_len = np.where(n_rows >= 3, seqs.lengths - 2, np.where(n_rows == 2, seqs.lengths - 1, seqs.lengths))
    last = seqs.starts + seqs.lengths - 1
    flat = seqs.flat
    valid_t = np.where(n_rows >= 3, flat[np.clip(last - 1, 0, None)] if len(flat) else 0, 0).astype(np.int64)
    test_t = np.where(n_rows >= 2, flat[np.clip(last, 0, None)] if len(flat) else 0, 0).astype(np.int64)
    return Split(train=Ragged(flat, seqs.starts, train_len), valid_target=valid_t, test_target=test_t,
                 max_len=max_len)


@dataclass
class Windows:
    """Training windows as an index into the sequences, gathered per batch (``batch``).

    Window ``r`` ends at position ``ends[r]`` of user ``rows[r]``'s training sequence: its targets
    are the positions ``[ends - stride, ends)`` and its inputs the ``max_len`` items before each.
    Two int32 per window instead of two ``[windows, max_len]`` int64 matrices: 10M interactions
    cost ~2 MB of index, not ~250 MB, and the sequences stay the (memory-mapped) flat array.
    """

    seqs: Ragged
    rows: np.ndarray  # int32: the user of each window
    ends: np.ndarray  # int32: one past the window's last target position
    max_len: int
    stride: int

    def __len__(self) -> int:
        return len(self.rows)

    def _spans(self, idx: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        rows, end = self.rows[idx].astype(np.int64), self.ends[idx].astype(np.int64)
        start = np.maximum(0, end - 1 - self.max_len)  # first input position
        first_target = np.maximum(1, end - self.stride)  # earlier targets belong to the next window back
        return rows, end, end - 1 - start, first_target - start - 1

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, targets)`` int64 ``[len(idx), max_len]``, right-padded with 0, for windows ``idx``."""
        rows, end, take, skip = self._spans(idx)
        return (self.seqs.gather(rows, end - 1, self.max_len, take),
                self.seqs.gather(rows, end, self.max_len, take, skip=skip))

    def tokens(self) -> np.ndarray:
        """Targets per window (the non-padding entries of its target row)."""
        _, _, take, skip = self._spans(slice(None))
        return np.maximum(take - skip, 0)


def window_index(train: Sequence[np.ndarray], max_len: int, stride: int | None = None) -> Windows:
    """The windows ``training_windows`` cuts, as an index (see :class:`Windows`)."""
    stride = min(stride or max_len, max_len)
    seqs = Ragged.from_list(train)
    lengths = seqs.lengths.astype(np.int64)
    n_win = np.where(lengths >= 2, (lengths - 2) // stride + 1, 0)
    total = int(n_win.sum())
    rows = np.repeat(np.arange(len(lengths), dtype=np.int32), n_win)
    k = np.arange(total) - np.repeat(np.cumsum(n_win) - n_win, n_win)  # window k of its user, from the end
    ends = (lengths[rows] - k * stride).astype(np.int32)  # targets are the positions [end - stride, end)
    return Windows(seqs, rows, ends, max_len, stride)


def training_windows(train: Sequence[np.ndarray], max_len: int,
                     stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cut each training sequence into ``(inputs, targets)`` windows of ``max_len``, right-padded with 0.

    ``targets[r, j]`` is the item after ``inputs[r, j]``; the loss is taken at every position whose
    target is not 0, and every training interaction after a user's first is a target exactly once.
    Windows are laid from the end of each sequence backwards, ``stride`` targets apart (default
    ``max_len``: no overlap). A smaller stride overlaps the windows so each target is predicted
    from at least ``max_len - stride + 1`` earlier items (RecBole's one-row-per-prefix gives every
    target the full ``max_len``, at ``max_len`` times the cost); targets another window already
    covers are set to 0 there. All windows at once (tests, benchmarks); the trainer gathers them
    per batch from ``window_index``.
    """
    w = window_index(train, max_len, stride)
    if not len(w):
        empty = np.zeros((0, max_len), dtype=np.int64)
        return empty, empty.copy()
    return w.batch(np.arange(len(w)))
