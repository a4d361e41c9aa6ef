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
from mlconnect.engine.losses import chunk_size
from mlconnect.engine.metrics import MetricAccumulator
from mlconnect.engine.models import SequentialRecommender


def order_keys(scores: torch.Tensor, first_item: int) -> torch.Tensor:
    """One int64 per score that sorts like (score, then lower item id first): unique, so no ties.

    The float32 bits are mapped to an int32 with the same order (negative floats have their
    magnitude bits flipped), shifted up, and the item id goes, inverted, in the low 32 bits.
    """
    bits = (scores.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into 0.0: they compare equal
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    ids = torch.arange(first_item, first_item + scores.shape[1], device=scores.device)
    return (ordered.long() << 32) | (0xFFFFFFFF - ids)


def topk_ranks(h: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
               k: int, chunk: int, history: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of ``target`` among all items when it is below ``k`` (else ``k``).

    Walks the catalog ``chunk`` items at a time and keeps each row's best ``k`` items, merged chunk
    by chunk by :func:`order_keys` (score, then lower item id), plus the target's own key, read
    from its chunk. The rank is the number of kept items ahead of the target: exact, ties
    included. Padding (index 0) is never ranked. ``history`` ``[B, W]`` (0-padded item ids), when
    given, is masked out (-inf) except the row's own target ("mask the history, never the target").
    """
    n_rows, n_items = len(target), table.shape[0]
    k = min(k, n_items)
    tgt = target.unsqueeze(1)
    rows = torch.arange(n_rows, device=h.device).unsqueeze(1)
    key_t = torch.empty(n_rows, dtype=torch.long, device=h.device)
    best = torch.empty(n_rows, 0, dtype=torch.long, device=h.device)
    for c0 in range(0, n_items, chunk):
        c1 = min(n_items, c0 + chunk)
        s = h @ table[c0:c1].T
        if bias is not None:
            s = s + bias[c0:c1]
        s = s.float()
        if c0 == 0:
            s[:, 0] = float("-inf")
        if history is not None:
            sel = (history >= c0) & (history < c1) & (history != tgt) & (history > 0)
            s[rows.expand_as(history)[sel], history[sel] - c0] = float("-inf")
        keys = order_keys(s, c0)
        del s
        inside = (target >= c0) & (target < c1)
        key_t[inside] = keys[inside, target[inside] - c0]
        top = torch.topk(keys, min(k, c1 - c0), dim=1).values
        best = torch.topk(torch.cat([best, top], 1), min(k, best.shape[1] + top.shape[1]), dim=1).values
    return (best > key_t.unsqueeze(1)).sum(1)


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
    chunk = chunk_size(min(bs, max(len(users), 1)), table.shape[0], device, cfg.get("eval_chunk_size"))
    for s in range(0, len(users), bs):
        xb = torch.from_numpy(x[s:s + bs]).to(device)
        tb = torch.from_numpy(target[s:s + bs]).to(device)
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            h = model.last_hidden(xb, (xb > 0).sum(1))
            if negatives is not None:
                cand = torch.cat([tb.unsqueeze(1), torch.from_numpy(negatives[s:s + bs]).to(device)], dim=1)
                rank = sampled_ranks(candidate_scores(h, table, bias, cand), cand)
            else:
                hist = _history(split, which, users[s:s + bs], device) if cfg["mask_history"] else None
                rank = topk_ranks(h, table, bias, tb, acc.max_k, chunk, hist)
        acc.update_ranks(rank)
    model.train(was_training)
    return acc.compute()


def _history(split: Any, which: str, users: np.ndarray, device: torch.device) -> torch.Tensor:
    hist = [split.history(which, int(u)) for u in users]
    hb = np.zeros((len(hist), max(1, max(len(h) for h in hist))), dtype=np.int64)
    for i, h in enumerate(hist):
        hb[i, : len(h)] = h
    return torch.from_numpy(hb).to(device)
