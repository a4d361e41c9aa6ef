"""RecBole's sampled evaluation (``eval_args.mode: uni100 / pop100 / uniN / popN``).

Each valid/test target is ranked against N negatives instead of the whole catalog. The negatives
follow RecBole 1.2.1 (``recbole.sampler.Sampler`` with the ``NegSampleEvalDataLoader``):

* **Excluded items.** RecBole's sequential dataset turns every interaction after a user's first
  into a (prefix -> target) row and splits the rows; a phase's excluded items are the targets of
  the rows up to and including that phase. So a valid negative is never one of the user's
  train targets or the valid target, and a test negative never a train, valid or test target.
  The user's *first* item is not a target, so (unless it recurs) RecBole can draw it as a
  negative; we keep that rule so the numbers match RecBole's.
* **Distribution.** ``uni``: uniform over the real items (1 .. n_items - 1). ``pop``: in proportion
  to how often an item is a target over all three phases (RecBole's candidate list). A draw that
  hits an excluded item is redrawn, until none does.
* **Duplicates.** Draws are with replacement; RecBole scatters the scores into a row of -inf, so a
  negative drawn twice counts once. :func:`sampled_ranks` does the same.

One difference, on purpose: RecBole redraws the negatives at every evaluation, we draw them once
per phase from the run's seed (a local numpy generator: the training RNG is untouched), so every
epoch's valid metric is measured on the same candidates and a resumed run sees the same ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mlconnect.errors import MlconnectError

_MODE = re.compile(r"^(uni|pop)(\d+)$")
ROW_BLOCK = 4096  # users whose excluded items are checked at once (bounded memory)


def parse_mode(mode: Any) -> tuple[str, int] | None:
    """``"full"`` -> None; ``"uni100"`` -> ("uni", 100); ``"pop50"`` -> ("pop", 50); else ValueError."""
    if mode == "full":
        return None
    m = _MODE.match(str(mode))
    if not m or int(m.group(2)) < 1:
        raise ValueError(f"eval_args.mode {mode!r} is not one of full, uniN, popN (e.g. uni100)")
    return m.group(1), int(m.group(2))


def phase_mode(eval_args: Mapping[str, Any], phase: str) -> tuple[str, int] | None:
    """The mode for ``valid``/``test``: RecBole's ``mode: X`` or ``mode: {valid: X, test: Y}``.

    As in RecBole, a dict with one phase gives the other phase the same mode.
    """
    mode = eval_args.get("mode", "full")
    if isinstance(mode, Mapping):
        default = mode.get("valid", mode.get("test", "full"))
        mode = mode.get(phase, default)
    return parse_mode(mode)


def _excluded(split: Any, which: str, u: int) -> np.ndarray:
    """Item ids RecBole excludes for user ``u`` in phase ``which`` (the targets up to that phase)."""
    parts = [split.train[u][1:], [split.valid_target[u]]]
    if which == "test":
        parts.append([split.test_target[u]])
    items = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])
    return np.unique(items[items > 0])


def target_counts(split: Any, n_items: int) -> np.ndarray:
    """How often each item is a target over all phases: RecBole's popularity (first items excluded)."""
    counts = np.zeros(n_items, dtype=np.int64)
    for seq in split.train:
        if len(seq) > 1:
            np.add.at(counts, np.asarray(seq[1:], dtype=np.int64), 1)
    counts += np.bincount(split.valid_target, minlength=n_items)[:n_items]
    counts += np.bincount(split.test_target, minlength=n_items)[:n_items]
    counts[0] = 0
    return counts


def sample_negatives(split: Any, which: str, users: np.ndarray, n_items: int, dist: str, n: int,
                     seed: int) -> np.ndarray:
    """``[len(users), n]`` negatives for the ``which`` rows of ``users``, as RecBole draws them."""
    rng = np.random.default_rng([seed % 2**32, 1 if which == "valid" else 2, n, dist == "pop"])
    counts = target_counts(split, n_items) if dist == "pop" else None
    if counts is not None:
        cdf = np.cumsum(counts)
        total = int(cdf[-1])

        def draw(size: int) -> np.ndarray:
            return np.searchsorted(cdf, rng.integers(0, total, size), side="right")
    else:
        def draw(size: int) -> np.ndarray:
            return rng.integers(1, n_items, size)

    out = np.empty((len(users), n), dtype=np.int64)
    for b0 in range(0, len(users), ROW_BLOCK):
        block = users[b0:b0 + ROW_BLOCK]
        excl = [_excluded(split, which, int(u)) for u in block]
        _check_room(excl, block, n_items, counts)
        # Excluded (row, item) pairs as sorted int64 keys; a draw is rejected when its key is there.
        keys = np.concatenate([r * n_items + e for r, e in enumerate(excl)]) if excl else np.empty(0, np.int64)
        keys.sort()
        rows = np.repeat(np.arange(len(block), dtype=np.int64), n)
        vals = draw(len(rows))
        todo = np.arange(len(rows))
        while len(todo):
            k = rows[todo] * n_items + vals[todo]
            pos = np.searchsorted(keys, k)
            hit = (pos < len(keys)) & (keys[np.minimum(pos, len(keys) - 1)] == k)
            todo = todo[hit]
            vals[todo] = draw(len(todo))
        out[b0:b0 + len(block)] = vals.reshape(len(block), n)
    return out


def _check_room(excl: list[np.ndarray], users: np.ndarray, n_items: int, counts: np.ndarray | None) -> None:
    """RecBole refuses users who interacted with every item: there is nothing left to sample."""
    if counts is not None:  # popularity: only items that are someone's target can be drawn
        total = counts.sum()
        full = [u for u, e in zip(users, excl, strict=True) if total - counts[e].sum() <= 0]
    else:
        full = [u for u, e in zip(users, excl, strict=True) if len(e) >= n_items - 1]
    if full:
        raise MlconnectError(f"{len(full)} user(s) interacted with every item that can be sampled, so no "
                             "negatives can be drawn for them",
                             "filter those users with user_inter_num_interval, or use eval_args.mode: full")


def sampled_ranks(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """0-based rank of column 0 (the positive) among the distinct negatives in columns 1..N.

    ``scores`` and ``candidates`` are ``[B, 1 + N]``. A negative is ahead of the positive when it
    scores higher, or scores the same and has the lower item id (a fixed tie rule where RecBole's
    ``topk`` is arbitrary); a negative drawn twice counts once, as in RecBole's scattered row.
    """
    pos_s, pos_i = scores[:, :1], candidates[:, :1]
    neg_s, neg_i = scores[:, 1:], candidates[:, 1:]
    ahead = (neg_s > pos_s) | ((neg_s == pos_s) & (neg_i < pos_i))
    sorted_i, order = neg_i.sort(dim=1)
    repeat = torch.zeros_like(ahead)
    repeat[:, 1:] = sorted_i[:, 1:] == sorted_i[:, :-1]
    first = torch.ones_like(ahead).scatter_(1, order, ~repeat)
    return (ahead & first).sum(1)
