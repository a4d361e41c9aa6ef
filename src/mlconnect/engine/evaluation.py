"""Valid/test metrics in bounded memory: full ranking over item chunks, or RecBole's sampled ranking.

Full ranking never builds the ``users x items`` score matrix. For a batch of users it walks the
catalog ``chunk`` items at a time, merges each chunk's top K into a running top K (RecBole takes
one ``torch.topk`` over the whole row; the merged top K is the same set) and reads the target's
score from its own chunk. The target's 0-based rank is the number of items ahead of it: a
higher score, or the same score and a lower item id. :class:`MetricAccumulator` turns ranks into
RecBole's metrics. Peak memory is ``eval_batch_size x chunk`` scores, whatever the catalog
(``eval_chunk_size``, or chosen from the batch: :func:`mlconnect.engine.losses.chunk_size`).

Scores are the numbers the whole-matrix path computed (the same matmul, chunk by chunk, in the
same dtype) and are only ever compared with each other, so on ml-100k the metrics are identical
to ranking the full matrix. Exact ties are the one difference: RecBole's ``topk`` orders them
arbitrarily, here the lower item id goes first, always.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from mlconnect.engine.eval_sampling import phase_mode, sample_negatives, sampled_ranks
from mlconnect.engine.losses import CHUNK_ELEMENTS, chunk_size
from mlconnect.engine.metrics import MetricAccumulator
from mlconnect.engine.models import SequentialRecommender


def _chunk_scores(h: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None, c0: int, c1: int,
                  target: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
    """Float32 scores of items ``c0:c1``: padding and (when given) the history, bar the target, at -inf."""
    s = h @ table[c0:c1].T
    if bias is not None:
        s = s + bias[c0:c1]
    s = s.float()
    if c0 == 0:
        s[:, 0] = float("-inf")
    if history is not None:
        tgt = target.unsqueeze(1)
        sel = (history >= c0) & (history < c1) & (history != tgt) & (history > 0)
        rows = torch.arange(len(target), device=h.device).unsqueeze(1).expand_as(history)
        s[rows[sel], history[sel] - c0] = float("-inf")
    return s


def topk_ranks(h: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
               k: int, chunk: int, history: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of ``target`` among all items when it is below ``k`` (else ``k`` or more).

    Walks the catalog ``chunk`` items at a time, keeps each row's best ``k`` (score, item) pairs,
    merged chunk by chunk, and reads the target's score from its own chunk. The rank is the number
    of items ahead of the target: a higher score, or the same score and a lower item id. Every item
    ahead of a target ranked below ``k`` is among the kept ones, except items that tie with the
    target when it ties with the ``k``-th best score (``topk`` keeps an arbitrary part of a tie):
    those rows, rare outside integer-valued or bf16 scores, are counted again, exactly, in a second
    pass. Padding (0) is never ranked; ``history`` ``[B, W]`` (0-padded ids), when given, is masked
    out except the row's own target ("mask the history, never the target").
    """
    n_rows, n_items = len(target), table.shape[0]
    k = min(k, n_items)
    tgt = target.unsqueeze(1)
    s_t = torch.empty(n_rows, device=h.device)
    best_v = torch.empty(n_rows, 0, device=h.device)
    best_i = torch.empty(n_rows, 0, dtype=torch.long, device=h.device)
    for c0 in range(0, n_items, chunk):
        c1 = min(n_items, c0 + chunk)
        s = _chunk_scores(h, table, bias, c0, c1, target, history)
        inside = (target >= c0) & (target < c1)
        s_t[inside] = s[inside, target[inside] - c0]
        v, i = torch.topk(s, min(k, c1 - c0), dim=1)
        best_v, j = torch.topk(torch.cat([best_v, v], 1), min(k, best_v.shape[1] + v.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + c0], 1).gather(1, j)
    s_t = s_t.unsqueeze(1)
    rank = ((best_v > s_t) | ((best_v == s_t) & (best_i < tgt))).sum(1)
    cut_tie = best_v[:, -1:] == s_t
    if cut_tie.any():
        rows = cut_tie.squeeze(1).nonzero().squeeze(1)
        exact = torch.zeros(len(rows), dtype=torch.long, device=h.device)
        for c0 in range(0, n_items, chunk):  # the same matmuls as above, so the same scores
            c1 = min(n_items, c0 + chunk)
            s = _chunk_scores(h, table, bias, c0, c1, target, history)[rows]
            idx = torch.arange(c0, c1, device=h.device).unsqueeze(0)
            exact += ((s > s_t[rows]) | ((s == s_t[rows]) & (idx < tgt[rows]))).sum(1)
        rank[rows] = exact
    return rank


def candidate_scores(h: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None,
                     candidates: torch.Tensor) -> torch.Tensor:
    """``[B, 1 + N]`` scores of each row's own candidates (one batched matmul)."""
    s = torch.bmm(table[candidates], h.unsqueeze(2)).squeeze(2)
    if bias is not None:
        s = s + bias[candidates]
    return s.float()


@torch.inference_mode()
def evaluate(model: SequentialRecommender, split: Any, which: str, cfg: Mapping[str, Any], device: torch.device,
             amp: torch.dtype | None = None) -> dict[str, float]:
    """Metrics over every user with a ``which`` (valid/test) target: full or sampled ranking per
    ``eval_args.mode``, ``eval_batch_size`` users at a time."""
    users, x, target = split.eval_inputs(which)
    acc = MetricAccumulator(cfg["metrics"], cfg["topk"])
    mode = phase_mode(cfg["eval_args"], which)
    negatives = None
    if mode is not None:
        negatives = sample_negatives(split, which, users, model.n_items, mode[0], mode[1], cfg["seed"])
    was_training = model.training
    model.eval()
    table, bias = model.item_table(), model.output_bias()
    bs = cfg["eval_batch_size"]
    # 2 x the training budget (32 MB of scores on CPU): fewer, wider chunks rank faster.
    chunk = chunk_size(min(bs, max(len(users), 1)), table.shape[0], device, cfg.get("eval_chunk_size"), scale=2)
    enc_rows = encoder_rows(cfg, device)
    for s in range(0, len(users), bs):
        xb = torch.from_numpy(x[s:s + bs]).to(device)
        tb = torch.from_numpy(target[s:s + bs]).to(device)
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            # The encoder's activations are rows x positions x inner_size (4,096 x 50 x 256 floats
            # is 210 MB a tensor), so it runs on fewer rows at a time; only [rows, H] is kept.
            h = torch.cat([model.last_hidden(xe, (xe > 0).sum(1)) for xe in xb.split(enc_rows)])
            if negatives is not None:
                cand = torch.cat([tb.unsqueeze(1), torch.from_numpy(negatives[s:s + bs]).to(device)], dim=1)
                rank = sampled_ranks(candidate_scores(h, table, bias, cand), cand)
            else:
                hist = _history(split, which, users[s:s + bs], device) if cfg["mask_history"] else None
                rank = topk_ranks(h, table, bias, tb, acc.max_k, chunk, hist)
        acc.update_ranks(rank)
    model.train(was_training)
    return acc.compute()


def encoder_rows(cfg: Mapping[str, Any], device: torch.device) -> int:
    """Sequences per encoder call at evaluation: keeps rows x positions x width within one chunk budget."""
    width = max(int(cfg.get("inner_size") or 0), int(cfg.get("hidden_size") or 64) * 4)
    budget = CHUNK_ELEMENTS.get(device.type, 1 << 22)
    return max(64, budget // (int(cfg["MAX_ITEM_LIST_LENGTH"]) * width))


def _history(split: Any, which: str, users: np.ndarray, device: torch.device) -> torch.Tensor:
    hist = [split.history(which, int(u)) for u in users]
    hb = np.zeros((len(hist), max(1, max(len(h) for h in hist))), dtype=np.int64)
    for i, h in enumerate(hist):
        hb[i, : len(h)] = h
    return torch.from_numpy(hb).to(device)
