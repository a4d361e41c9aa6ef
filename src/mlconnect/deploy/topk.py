"""Exact top-k over a whole catalog with numpy: the scoring half of ``mlconnect predict``.

The bundle's encoder graph gives one vector per user; the score of item ``i`` is ``u · w_i (+ b_i)``.
Scoring is one BLAS matmul per block of users, sized so the block's score matrix stays in cache, and
the selection reads that matrix once more instead of sorting it:

- items are dealt into ``G`` groups of ``g`` by ``i % G`` (the score row viewed as ``[g, G]``), so one
  ``max`` over the short axis, a contiguous SIMD reduction, gives every group's best score;
- the k-th best group maximum is a floor under the top-k: those k maxima are k distinct items that
  score at least that much, so the k-th best item does too. One comparison with the floor and a
  ``flatnonzero`` find the items at or above it, typically k plus a few, which are sorted.

The result is the exact top-k of the float32 scores (tests compare it with a full sort), at a few
passes over memory instead of a ``[B, n_items]`` TopK plus two full copies for the masks, which was
about half of ONNX Runtime's time in the graph (benchmarks/predict_bench.py). Imports numpy only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

GROUP = 32           # items per group: g * k candidates per user; G = n_items / g maxima to partition
BLOCK_FLOATS = 1 << 22  # one block's score matrix (16 MB): in L3 between the matmul and the selection


def padded_table(table: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``[H (+1 with a bias), G * GROUP]`` float32: the item table transposed, zero-padded to whole groups,
    the bias as one more input dimension (user vectors get a trailing 1: ``u · [w, b]``)."""
    n, h = table.shape
    extra = 0 if bias is None else 1
    t = np.zeros((h + extra, -(-n // GROUP) * GROUP), dtype=np.float32)
    t[:h, :n] = table.T
    if bias is not None:
        t[h, :n] = bias
    return t


class ItemTopK:
    """Scores and exact top-k for user vectors against a fixed item table.

    ``matmul(users)`` returns the ``[B, G * GROUP]`` scores of ``n_items`` items (the padded tail and row 0,
    padding, are never ranked): a bundle's ``item_scores.onnx`` under ONNX Runtime, whose single-threaded
    sgemm is about twice numpy's here, or numpy (:meth:`from_table`). ``workers`` > 1 runs blocks of users
    on that many threads (ONNX Runtime and numpy release the GIL in every step).
    """

    def __init__(self, n_items: int, matmul: Callable[[np.ndarray], np.ndarray], workers: int = 1) -> None:
        self.n_items, self.matmul = n_items, matmul
        self.groups = -(-n_items // GROUP)
        self.block = max(8, BLOCK_FLOATS // (self.groups * GROUP))
        self.workers = max(1, workers)
        self.pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None

    @classmethod
    def from_table(cls, table: np.ndarray, bias: np.ndarray | None = None, workers: int = 1) -> ItemTopK:
        """``table`` ``[n_items, H]`` (row 0 is padding), ``bias`` ``[n_items]`` or None; numpy scores."""
        t = padded_table(table, bias)

        def matmul(users: np.ndarray) -> np.ndarray:
            if bias is not None:
                users = np.concatenate([users, np.ones((len(users), 1), dtype=np.float32)], axis=1)
            return users @ t
        return cls(len(table), matmul, workers)

    def topk(self, users: np.ndarray, seen: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [B, k] float32, item ids [B, k] int64), best first. ``seen`` [B, S] ids score -inf
        (0 is padding); a row with fewer than k rankable items ends in -inf entries."""
        users = np.asarray(users, dtype=np.float32)
        k = min(k, self.n_items)
        b = len(users)
        scores, ids = np.empty((b, k), dtype=np.float32), np.empty((b, k), dtype=np.int64)
        spans = [(lo, min(lo + self.block, b)) for lo in range(0, b, self.block)]

        def one(span: tuple[int, int]) -> None:
            lo, hi = span
            s, i = self._block(users[lo:hi], None if seen is None else seen[lo:hi], k)
            scores[lo:hi], ids[lo:hi] = s, i

        if self.pool is not None and len(spans) > 1:
            list(self.pool.map(one, spans))
        else:
            for span in spans:
                one(span)
        return scores, ids

    def _block(self, users: np.ndarray, seen: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows, g, big_g = len(users), GROUP, self.groups
        width = g * big_g
        s = self.matmul(users)                       # [rows, width]
        s[:, self.n_items:] = -np.inf
        s[:, 0] = -np.inf                            # padding, as the engine's full_scores
        if seen is not None:
            np.put_along_axis(s, seen, -np.inf, axis=1)
        if k < big_g:
            best = s.reshape(rows, g, big_g).max(axis=1)                   # [rows, G] group maxima
            kth = np.partition(best, big_g - k, axis=1)[:, big_g - k]      # the k-th best: a floor under the top-k
        else:                                                              # tiny catalogs: no floor
            kth = np.full(rows, -np.inf, dtype=np.float32)
        # Every item at or above its row's floor (at least k, typically k + a few): flat positions, then
        # sorted by row and score, best first; the first k of each row are its top-k.
        pos = np.flatnonzero(s >= kth[:, None])
        row, item = np.divmod(pos, width)
        val = s.reshape(-1)[pos]
        order = np.lexsort((-val, row))
        row, item, val = row[order], item[order], val[order]
        rank = np.arange(len(row)) - np.searchsorted(row, np.arange(rows))[row]
        keep = rank < k
        scores = np.full((rows, k), -np.inf, dtype=np.float32)
        ids = np.zeros((rows, k), dtype=np.int64)
        scores[row[keep], rank[keep]] = val[keep]
        ids[row[keep], rank[keep]] = item[keep]
        return scores, ids


class EncoderTopK:
    """A bundle's ``encoder.onnx`` (histories -> user vectors) and ``item_scores.onnx`` (user vectors ->
    scores) under ONNX Runtime, selected by :class:`ItemTopK`: ``topk(items, seen, k)`` with the
    interface of bundle.Scorer."""

    def __init__(self, root: Path, n_items: int, threads: int | None = None) -> None:
        from mlconnect.deploy.bundle import ENCODER_MODEL, ITEM_SCORES_MODEL, Scorer

        threads = threads or os.cpu_count() or 1
        # No spinning: the encoder's idle pool threads would busy-wait on the cores the item blocks need
        # (1,500-1,600 -> 1,800-2,000 users/s on the benchmark, A/B alternated, load ~10).
        self.encoder = Scorer(root / ENCODER_MODEL, threads=threads, spin=False)
        self.device = self.encoder.device
        scores = Scorer(root / ITEM_SCORES_MODEL, threads=1)  # one thread per block, blocks on `threads` workers
        self.items = ItemTopK(n_items, lambda u: scores.session.run(["scores"], {"user": u})[0], workers=threads)

    def user_vectors(self, items: np.ndarray) -> np.ndarray:
        return self.encoder.session.run(["user"], {"items": items})[0]

    def topk(self, items: np.ndarray, seen: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.items.topk(self.user_vectors(items), seen, k)
