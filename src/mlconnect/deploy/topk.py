"""Exact top-k over a whole catalog on the CPU: the scoring half of ``mlconnect predict --bundle``.

The score of item ``i`` for user vector ``u`` is ``u · v_i`` (a bias rides as one more dimension). Most of
the cost is that product for every item, so it is done twice, cheaply then exactly:

1. **Every item in 8-bit integers** (``item_candidates.onnx`` under ONNX Runtime, whose int8 matmul is
   about 3x its float32 one here): ``u`` and the item table are rounded, ``S_i = q(u) · q(v_i)``, and the
   graph also gives each group of ``GROUP`` consecutive items' maximum and the best item of each of the
   best groups (distinct items, most of them among the true top-k).
2. **A floor with a proven margin**: rounding moves any score by at most ``E = |u|·R + |u - û|·M``
   (Cauchy-Schwarz on both sides; ``R`` the largest rounding error of an item vector, ``M`` the largest
   rounded item norm). The exact scores of those best items give ``L``, at most the true k-th best
   score; an item whose rounded score is below ``L - E`` cannot be in the top-k. Excluded items (padding,
   seen) are ranked out in numpy, and the groups whose maximum reaches the floor are searched for the
   items that do: about 100 candidates of a 45k-item catalog (benchmarks/predict_bench.py --profile).
3. **Exact scores** (float32) for the candidates only, sorted: the top-k of those is the exact top-k.

Integers are 7-bit on the user side (-63..63) and 8-bit on the item side: no pair of products can
saturate the 16-bit sums of x86's AVX2 kernel (2 * 127 * 127 < 32768), so the bound holds on every CPU.
Tests compare the result with a full float32 sort, near-ties and a coarse scale included. Imports numpy
(and onnxruntime through bundle.Scorer; ``candidates_graph`` needs ``onnx``, which export has).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

GROUP = 32               # items per group: the graph's maxima are a [B, n_items / GROUP] table
# Users per ONNX Runtime call, by the size of its [B, n_items] int32 scores: large calls measured fastest
# end to end (4 MB: ~9.4k users/s, 64 MB: ~13.4k, same run; benchmarks/predict_bench.py), capped at 256.
BLOCK_BYTES = 64 << 20
ITEM_LEVELS = 127        # item side: int8
USER_LEVELS = 63         # user side: uint8 around USER_ZERO, 7 bits (see the docstring)
USER_ZERO = 64
MASKED = np.iinfo(np.int32).min


def item_rows(table: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``[whole groups of items, H (+1 with a bias)]`` float32: the item table zero-padded to whole groups,
    the bias as one more dimension (user vectors get a trailing 1: ``u · [v, b]``)."""
    n, h = table.shape
    rows = np.zeros((-(-n // GROUP) * GROUP, h + (bias is not None)), dtype=np.float32)
    rows[:n, :h] = table
    if bias is not None:
        rows[:n, h] = bias
    return rows


def quantize_items(rows: np.ndarray) -> tuple[np.ndarray, float]:
    """int8 items and their scale (``rows ≈ scale * q``). The one definition: export writes ``q`` into the
    graph and the scorer derives its bound from the same call."""
    peak = float(np.abs(rows).max(initial=0.0))
    scale = peak / ITEM_LEVELS if peak > 0 else 1.0
    return np.round(rows / scale).astype(np.int8), scale


def candidates_graph(rows: np.ndarray) -> Any:
    """The ONNX graph of step 1 (export writes it; needs the ``onnx`` package, unlike the rest of this module).

    Inputs: ``user`` uint8 ``[B, D]``, ``k`` int64 ``[1]``. Outputs: ``scores`` int32 ``[B, n]``,
    ``group_max`` int32 ``[B, n / GROUP]`` (the best score of each run of ``GROUP`` items) and
    ``top_items`` int64 ``[B, k]``, the best item of each of the ``k`` groups with the best maxima."""
    from onnx import TensorProto, helper, numpy_helper

    q, _ = quantize_items(rows)
    width, dim = q.shape
    const = [numpy_helper.from_array(np.ascontiguousarray(q.T), "items_q"),
             numpy_helper.from_array(np.array(USER_ZERO, np.uint8), "user_zero"),
             numpy_helper.from_array(np.array([0, width // GROUP, GROUP], np.int64), "grouped"),
             numpy_helper.from_array(np.array([2], np.int64), "in_group"),
             numpy_helper.from_array(np.array([-1], np.int64), "last_axis"),
             numpy_helper.from_array(np.array(GROUP, np.int64), "group_size")]
    nodes = [helper.make_node("MatMulInteger", ["user", "items_q", "user_zero"], ["scores"]),
             helper.make_node("Reshape", ["scores", "grouped"], ["by_group"]),
             helper.make_node("ReduceMax", ["by_group", "in_group"], ["group_max"], keepdims=0),
             helper.make_node("TopK", ["group_max", "k"], ["top_max", "top_groups"]),
             # The item each of those groups has its maximum at (the first, on ties).
             helper.make_node("Unsqueeze", ["top_groups", "last_axis"], ["top_index"]),
             helper.make_node("GatherND", ["by_group", "top_index"], ["top_scores"], batch_dims=1),
             helper.make_node("ArgMax", ["top_scores"], ["top_slot"], axis=2, keepdims=0, select_last_index=0),
             helper.make_node("Mul", ["top_groups", "group_size"], ["top_first"]),
             helper.make_node("Add", ["top_first", "top_slot"], ["top_items"])]
    graph = helper.make_graph(
        nodes, "item_candidates",
        [helper.make_tensor_value_info("user", TensorProto.UINT8, ["batch", dim]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("scores", TensorProto.INT32, ["batch", width]),
         helper.make_tensor_value_info("group_max", TensorProto.INT32, ["batch", width // GROUP]),
         helper.make_tensor_value_info("top_items", TensorProto.INT64, ["batch", "k"])], const)
    opsets = [helper.make_opsetid("", 18)]
    # The IR version the opset needs, not this onnx package's newest: an older ONNX Runtime refuses a newer one.
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


Candidates = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, np.ndarray]]


def run_candidates(scorer: Any) -> Candidates:
    """The graph of :func:`candidates_graph` in a bundle.Scorer, as a function."""
    def run(user: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scores, group_max, top_items = scorer.session.run(None, {"user": user, "k": np.array([k], np.int64)})
        return scores, group_max, top_items
    return run


class ItemTopK:
    """Exact top-k of ``users @ rows.T`` (``rows`` from :func:`item_rows`; row 0 and the padded tail are
    never ranked). ``candidates(user_u8, k)`` runs the graph of :func:`candidates_graph`."""

    def __init__(self, rows: np.ndarray, n_items: int, candidates: Candidates) -> None:
        self.rows, self.n_items, self.candidates = rows, n_items, candidates
        q, scale = quantize_items(rows)
        rounded = q.astype(np.float64) * scale
        self.scale = scale
        self.rounding = float(np.sqrt(((rows - rounded) ** 2).sum(1)).max())  # R
        self.reach = float(np.sqrt((rounded ** 2).sum(1)).max())              # M
        self.norm = float(np.sqrt((rows.astype(np.float64) ** 2).sum(1)).max())  # for float32 sums' slack
        self.groups = len(rows) // GROUP
        self.block = int(np.clip(BLOCK_BYTES // (4 * len(rows)), 4, 256))
        self.counted = [0, 0]  # users, candidates scored exactly (benchmarks/predict_bench.py --profile)
        # Never ranked: item 0 (padding) and the padded tail of the last group.
        self.never = np.concatenate([[0], np.arange(n_items, len(rows))]).astype(np.int64)

    @classmethod
    def from_table(cls, table: np.ndarray, bias: np.ndarray | None = None) -> ItemTopK:
        """From an item table (``[n_items, H]``, row 0 padding) with the graph built in memory (tests)."""
        from mlconnect.deploy.bundle import Scorer

        rows = item_rows(table, bias)
        return cls(rows, len(table), run_candidates(Scorer(candidates_graph(rows).SerializeToString(), threads=1,
                                                           cpu=True)))

    def topk(self, users: np.ndarray, seen: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [B, k] float32, item ids [B, k] int64), best first. ``seen`` [B, S] ids are never
        ranked (0 is padding); a row with fewer than k rankable items ends in -inf entries."""
        users = np.ascontiguousarray(users, dtype=np.float32)
        k = min(k, self.n_items)
        out_s = np.full((len(users), k), -np.inf, dtype=np.float32)
        out_i = np.zeros((len(users), k), dtype=np.int64)
        if seen is None:
            seen = np.zeros((len(users), 1), dtype=np.int64)
        mask = np.concatenate([seen, np.broadcast_to(self.never, (len(users), len(self.never)))], axis=1)
        for lo in range(0, len(users), self.block):
            hi = min(lo + self.block, len(users))
            self._block(users[lo:hi], seen.shape[1], mask[lo:hi], k, out_s[lo:hi], out_i[lo:hi])
        return out_s, out_i

    def _block(self, u: np.ndarray, seen_width: int, mask: np.ndarray, k: int, out_s: np.ndarray,
               out_i: np.ndarray) -> None:
        n, big_g = len(u), self.groups
        step = np.abs(u).max(axis=1) / USER_LEVELS
        step[step == 0] = 1.0
        q = np.round(u / step[:, None])
        u64 = u.astype(np.float64)
        length = np.sqrt((u64 ** 2).sum(1))                                            # |u|
        error = length * self.rounding + np.sqrt(((u64 - q * step[:, None]) ** 2).sum(1)) * self.reach  # E
        # The best groups: k, plus as many as the excluded items can spoil (the seen ones, item 0's group
        # and the padded tail's).
        scores, group_max, top_items = self.candidates((q + USER_ZERO).astype(np.uint8),
                                                       min(k + seen_width + 2, big_g))
        np.put_along_axis(scores, mask, MASKED, axis=1)  # ranked out; group_max keeps them: more candidates
        floor = self._floor(u, length, scores, mask[:, :seen_width], top_items, step * self.scale, error, k)
        by_group = scores.reshape(n, big_g, GROUP)
        # Candidate groups, then the candidates in them: row-major, so rows come out sorted, items ascending.
        groups = np.flatnonzero(group_max >= floor[:, None])                       # row * G + group
        g_row = groups // big_g
        hits = np.flatnonzero(np.take(by_group.reshape(-1, GROUP), groups, axis=0) >= floor[g_row][:, None])
        row = g_row[hits // GROUP]
        item = (groups[hits // GROUP] - row * big_g) * GROUP + hits % GROUP
        exact = np.einsum("ij,ij->i", np.take(u, row, axis=0), np.take(self.rows, item, axis=0))
        self.counted[0] += n
        self.counted[1] += len(row)
        # Each row's candidates side by side ([B, most candidates], -inf after its own), then a per-row sort.
        counts = np.bincount(row, minlength=n)
        rank = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
        width = max(int(counts.max(initial=0)), k)
        s = np.full((n, width), -np.inf, dtype=np.float32)
        ids = np.zeros((n, width), dtype=np.int64)
        s[row, rank], ids[row, rank] = exact, item
        order = best_first(s, k)
        out_s[:] = np.take_along_axis(s, order, 1)
        out_i[:] = np.where(np.isfinite(out_s), np.take_along_axis(ids, order, 1), 0)

    def _floor(self, u: np.ndarray, length: np.ndarray, scores: np.ndarray, seen: np.ndarray,
               top_items: np.ndarray, unit: np.ndarray, error: np.ndarray, k: int) -> np.ndarray:
        """Per user, the integer score at or above which every item of the true top-k lies.

        ``top_items``: the best item of each of the best groups, distinct items; the k-th best exact score
        of the rankable ones, ``L``, is at most the true k-th best score. An item whose rounded score is
        below ``L - E`` is below it exactly, so it is not in the top-k. ``unit``: one integer step of a
        user's scores; ``length``: |u|; ``error``: E. The slack covers float32 sums of D terms
        (D * 2^-23 * |u| * max |v|) and the rounding to an integer. Fewer than k rankable items there: no
        floor."""
        n, top = top_items.shape
        if top < k:  # fewer groups than k (a tiny catalog): every rankable item is a candidate
            return np.full(n, MASKED + 1, dtype=np.int32)
        exact = np.einsum("btd,bd->bt", np.take(self.rows, top_items, axis=0), u)
        if seen.shape[1] <= 64:  # excluded: padding, the padded tail, seen (compared: no reads of `scores`)
            excluded = (top_items == 0) | (top_items >= self.n_items) | (top_items[:, :, None] == seen[:, None]).any(2)
        else:
            excluded = np.take_along_axis(scores, top_items, axis=1) == MASKED
        exact[excluded] = -np.inf
        least = np.partition(exact, top - k, axis=1)[:, top - k].astype(np.float64)
        sums = u.shape[1] * 2.0 ** -23 * length * self.norm
        floor = np.floor((least - error - 2 * sums) / unit) - 1
        return np.where(np.isfinite(floor), np.clip(floor, MASKED + 1, None), MASKED + 1).astype(np.int32)


def best_first(s: np.ndarray, k: int) -> np.ndarray:
    """Column positions of each row's k largest values, best first; equal values in column order (the
    stable sort's answer, from a partition plus a sort of k: the full sort of every candidate cost more)."""
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(s, part, 1)
    order = np.take_along_axis(part, np.lexsort((part, -values), axis=1), 1)
    # A tie across the k-th place (or fewer than k finite values) is where a partition may pick other
    # columns than the stable sort: those rows are sorted whole.
    tied = (s >= values.min(axis=1, keepdims=True)).sum(axis=1) > k
    if tied.any():
        order[tied] = np.argsort(-s[tied], axis=1, kind="stable")[:, :k]
    return order


class EncoderTopK:
    """A bundle's ``encoder.onnx`` (histories -> user vectors), ``item_candidates.onnx`` and
    ``item_table.npy`` under ONNX Runtime and numpy: ``topk(items, seen, k)`` with the interface of
    bundle.Scorer. Thread-safe: predict runs one chunk of users per core on it."""

    def __init__(self, root: Path, n_items: int, threads: int | None = 1) -> None:
        from mlconnect.deploy.bundle import ENCODER_MODEL, ITEM_CANDIDATES_MODEL, ITEM_TABLE, Scorer

        self.encoder = Scorer(root / ENCODER_MODEL, threads=threads, spin=False)
        self.device = self.encoder.device
        # The integer graph stays on the CPU (CUDA has no MatMulInteger for uint8 x int8).
        candidates = Scorer(root / ITEM_CANDIDATES_MODEL, threads=1, cpu=True)
        rows = np.load(root / ITEM_TABLE, allow_pickle=False)
        self.items = ItemTopK(rows, n_items, run_candidates(candidates))

    def user_vectors(self, items: np.ndarray) -> np.ndarray:
        return self.encoder.session.run(["user"], {"items": items})[0]

    def topk(self, items: np.ndarray, seen: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.items.topk(self.user_vectors(items), seen, k)

