"""Next-item losses whose memory does not grow with batch x catalog.

A batch has ``N`` target positions with hidden states ``h`` ``[N, H]`` and an item table ``[V, H]``.
Full cross-entropy needs the logits ``[N, V]`` (and as much again for the softmax and its
gradient): 2,048 positions x 23.7k items is 194 MB a copy, 2,048 x 1M items 8 GB. So:

* ``CE`` runs over the catalog in item chunks (:class:`ChunkedCrossEntropy`): the forward pass
  keeps an online logsumexp per row, the backward pass recomputes each chunk's logits. The loss
  and gradients are those of full CE (a test checks 1e-5); at most ``[N, chunk]`` lives at once.
  When the whole catalog fits in one chunk it is plain ``F.cross_entropy``, as before.
* ``CE`` with ``sampled_negatives: K`` is a sampled softmax over K negatives shared by the batch.
* ``gBCE`` (gSASRec) scores each position against K uniform negatives of its own.
* ``BPR`` scores each position against one uniform negative.

Chunk sizes come from the catalog and the batch unless the config gives them (``loss_chunk_size``):
``chunk = CHUNK_ELEMENTS // N`` items, so one chunk's logits stay about 16 MB on CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Elements of one [rows, items] chunk: 16 MB of float32 on CPU; bigger on accelerators, where
# fewer, larger matmuls are faster and memory is measured in GB.
CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26, "mps": 1 << 24}
MIN_CHUNK = 256


def chunk_size(rows: int, n_items: int, device: torch.device | str, configured: int | None = None,
               scale: int = 1) -> int:
    """Items per chunk: ``configured`` when given, else what keeps ``rows x chunk`` within
    ``scale`` x the device's budget (evaluation keeps no gradients, so it affords a larger one)."""
    if configured:
        return max(1, min(int(configured), n_items))
    budget = CHUNK_ELEMENTS.get(torch.device(device).type, 1 << 22) * scale
    return max(MIN_CHUNK, min(n_items, budget // max(rows, 1)))


@dataclass(frozen=True)
class LossOptions:
    """The config keys a loss reads, resolved once per model (``from_config``)."""

    loss_type: str = "CE"
    sampled_negatives: int = 0
    gbce_t: float = 0.75
    chunk: int | None = None  # loss_chunk_size; None = chosen from the batch and the catalog
    sparse: bool = False  # sampled losses read table rows as sparse-gradient lookups (runtime.sparse_rows)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> LossOptions:
        return cls(loss_type=cfg.get("loss_type", "CE"), sampled_negatives=int(cfg.get("sampled_negatives") or 0),
                   gbce_t=float(cfg.get("gbce_t", 0.75)), chunk=cfg.get("loss_chunk_size"))


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean CE of ``h @ table.T (+ bias)`` against ``targets``, ``chunk`` items at a time.

    Exactly full CE (up to float rounding): logsumexp is accumulated online over the chunks
    (running max and rescaled sum), and the backward pass recomputes each chunk's softmax from
    the saved logsumexp, so ``d loss / d logits = (softmax - onehot) / N`` never exists whole.
    Under autocast the matmuls run in the autocast dtype and everything else in float32, like
    ``F.cross_entropy(logits.float())`` on autocast logits.
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk: int) -> torch.Tensor:
        dev = h.device.type
        dtype = _autocast_dtype(dev) or h.dtype  # the matmuls' dtype
        acc = _acc_dtype(h)
        n, v = h.shape[0], table.shape[0]
        lse = torch.empty(n, dtype=acc, device=h.device)
        target_logit = torch.empty(n, dtype=acc, device=h.device)
        with torch.autocast(dev, enabled=False):
            hc = h.to(dtype)
            run_max = run_sum = None
            for c0 in range(0, v, chunk):
                logits = _chunk_logits(hc, table, bias, c0, min(v, c0 + chunk), dtype, acc)
                m = logits.max(1).values
                if run_max is None:
                    run_max, run_sum = m, torch.exp(logits - m[:, None]).sum(1)
                else:
                    new_max = torch.maximum(run_max, m)
                    run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(logits - new_max[:, None]).sum(1)
                    run_max = new_max
                inside = (targets >= c0) & (targets < c0 + chunk)
                target_logit[inside] = logits[inside, targets[inside] - c0]
            lse.copy_(run_max + torch.log(run_sum))
        ctx.save_for_backward(h, table, bias, targets, lse)
        ctx.chunk, ctx.dtype = chunk, dtype
        return (lse - target_logit).mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, table, bias, targets, lse = ctx.saved_tensors
        chunk, dtype = ctx.chunk, ctx.dtype
        n, v = h.shape[0], table.shape[0]
        acc = lse.dtype
        scale = grad.to(acc) / n
        grad_h = torch.zeros(h.shape, dtype=acc, device=h.device)
        grad_table = torch.zeros(table.shape, dtype=acc, device=table.device)
        grad_bias = torch.zeros(v, dtype=acc, device=h.device) if bias is not None else None
        rows = torch.arange(n, device=h.device)
        with torch.autocast(h.device.type, enabled=False):
            hc = h.to(dtype)
            for c0 in range(0, v, chunk):
                c1 = min(v, c0 + chunk)
                p = torch.exp(_chunk_logits(hc, table, bias, c0, c1, dtype, acc) - lse[:, None])
                inside = (targets >= c0) & (targets < c1)
                p[rows[inside], targets[inside] - c0] -= 1.0
                p *= scale
                pc = p.to(dtype)
                grad_h += (pc @ table[c0:c1].to(dtype)).to(acc)
                grad_table[c0:c1] = (pc.T @ hc).to(acc)
                if grad_bias is not None:
                    grad_bias[c0:c1] = p.sum(0)
        return (grad_h.to(h.dtype), grad_table.to(table.dtype),
                grad_bias.to(bias.dtype) if grad_bias is not None else None, None, None)


def _acc_dtype(h: torch.Tensor) -> torch.dtype:
    """float32 for the softmax and the gradients (float64 stays float64, for tests)."""
    return torch.float64 if h.dtype == torch.float64 else torch.float32


def _chunk_logits(hc: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None, c0: int, c1: int,
                  dtype: torch.dtype, acc: torch.dtype) -> torch.Tensor:
    logits = (hc @ table[c0:c1].to(dtype).T).to(acc)
    if bias is not None:
        logits = logits + bias[c0:c1].to(acc)
    return logits


def cross_entropy(h: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                  chunk: int | None = None) -> torch.Tensor:
    """Full-catalog CE; chunked (same loss and gradients) when the logits would exceed one chunk."""
    c = chunk_size(h.shape[0], table.shape[0], h.device, chunk)
    if c >= table.shape[0]:
        logits = h @ table.T
        if bias is not None:
            logits = logits + bias
        return F.cross_entropy(logits.float(), targets)
    return ChunkedCrossEntropy.apply(h, table, bias, targets, c)


def _rows(table: torch.Tensor, idx: torch.Tensor, sparse: bool) -> torch.Tensor:
    """``table[idx]``; with ``sparse`` its gradient is a sparse tensor of those rows, not a dense table."""
    return F.embedding(idx, table, sparse=True) if sparse else table[idx]


def sampled_softmax(h: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                    n_neg: int, sparse: bool = False) -> torch.Tensor:
    """Softmax over the positive and ``n_neg`` uniform negatives shared by the batch: one [N, K] matmul."""
    neg = torch.randint(1, table.shape[0], (n_neg,), device=targets.device)
    pos_logit = (h * _rows(table, targets, sparse)).sum(-1, keepdim=True)
    neg_logit = h @ _rows(table, neg, sparse).T
    if bias is not None:
        pos_logit = pos_logit + bias[targets].unsqueeze(-1)
        neg_logit = neg_logit + bias[neg]
    neg_logit = neg_logit.masked_fill(neg.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=1).float()
    return F.cross_entropy(logits, torch.zeros_like(targets))


def bpr(h: torch.Tensor, table: torch.Tensor, targets: torch.Tensor, sparse: bool = False) -> torch.Tensor:
    neg = torch.randint(1, table.shape[0], targets.shape, device=targets.device)
    pos_s = (h * _rows(table, targets, sparse)).sum(-1)
    neg_s = (h * _rows(table, neg, sparse)).sum(-1)
    return -F.logsigmoid(pos_s - neg_s).mean()


def gbce_beta(n_neg: int, n_real_items: int, t: float) -> float:
    """gSASRec's beta (Petrov & Macdonald, RecSys 2023, eq. 10): alpha = k / (|I| - 1) is the
    negative sampling rate and beta = alpha * (t * (1 - 1/alpha) + 1/alpha); t = 0 gives BCE
    (beta = 1), t = 1 gives beta = alpha."""
    alpha = n_neg / max(n_real_items - 1, 1)
    alpha = min(alpha, 1.0)  # with k >= |I| - 1 every item is a negative: plain BCE
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce(h: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, n_neg: int,
         t: float, row_chunk: int | None = None, sparse: bool = False) -> torch.Tensor:
    """gSASRec's generalised binary cross-entropy with ``n_neg`` uniform negatives per position.

    Paper (eq. 9): L = -(log sigma(s+)^beta + sum_{i in I-_k} log(1 - sigma(s_i))), i.e.
    beta * softplus(-s+) + sum softplus(s-), averaged over positions and the k + 1 logits as the
    reference implementation's BCE mean does. A negative that happens to be the positive is
    dropped (it would push the positive down). The [N, k, H] gather of negative embeddings is done
    ``row_chunk`` positions at a time under activation checkpointing, so only one chunk's gather
    is alive in the backward pass either.
    """
    n, v = h.shape[0], table.shape[0]
    beta = gbce_beta(n_neg, v - 1, t)
    neg = torch.randint(1, v, (n, n_neg), device=targets.device)
    rows = row_chunk or max(1, CHUNK_ELEMENTS.get(h.device.type, 1 << 22) // (n_neg * h.shape[1]))
    total = h.new_zeros((), dtype=_acc_dtype(h))
    for r0 in range(0, n, rows):
        sl = slice(r0, r0 + rows)
        args = (h[sl], table, bias, targets[sl], neg[sl], beta, sparse)
        part = checkpoint(_gbce_sum, *args, use_reentrant=False) if torch.is_grad_enabled() and rows < n \
            else _gbce_sum(*args)
        total = total + part
    return total / (n * (n_neg + 1))


def _gbce_sum(h: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
              neg: torch.Tensor, beta: float, sparse: bool = False) -> torch.Tensor:
    pos = (h * _rows(table, targets, sparse)).sum(-1)
    negs = torch.einsum("nh,nkh->nk", h, _rows(table, neg, sparse))
    if bias is not None:
        pos, negs = pos + bias[targets], negs + bias[neg]
    acc = _acc_dtype(h)
    pos, negs = pos.to(acc), negs.to(acc)
    neg_loss = F.softplus(negs).masked_fill(neg == targets.unsqueeze(1), 0.0)
    return beta * F.softplus(-pos).sum() + neg_loss.sum()


def next_item_loss(h: torch.Tensor, targets: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None,
                   opts: LossOptions) -> torch.Tensor:
    """The loss ``opts`` names, at positions ``h`` ``[N, H]`` with next items ``targets`` ``[N]``."""
    if opts.loss_type == "BPR":
        return bpr(h, table, targets, opts.sparse)
    if opts.loss_type == "gBCE":
        return gbce(h, table, bias, targets, opts.sampled_negatives, opts.gbce_t, sparse=opts.sparse)
    if opts.sampled_negatives:
        return sampled_softmax(h, table, bias, targets, opts.sampled_negatives, opts.sparse)
    return cross_entropy(h, table, bias, targets, opts.chunk)
