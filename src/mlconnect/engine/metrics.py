"""Full-ranking top-K metrics, computed the way RecBole 1.2.1 computes them.

RecBole's protocol for sequential models (leave-one-out, ``eval_args.mode: full``) scores every
item for every evaluation row, sets the padding column 0 to ``-inf``, takes ``torch.topk`` once for
the largest K, and marks which of the top-K positions hold the row's single positive item. From
that boolean matrix:

* ``hit@K``       1 if the positive is in the top K
* ``recall@K``    hits / number of positives (= hit@K, since there is one positive per row)
* ``precision@K`` hits / K
* ``mrr@K``       1 / rank of the positive when rank <= K, else 0
* ``ndcg@K``      1 / log2(rank + 1) when rank <= K, else 0 (the ideal DCG is 1 with one positive)

each averaged over rows. Ties are broken by ``torch.topk``'s order, exactly as RecBole does: the
positive's rank is its position in ``topk``'s output, not a count of strictly larger scores.

RecBole's fixture (``fixtures/recbole/metrics-case.npz``) confirms the padding convention: column 0
is ``-inf`` in all 500 rows and no positive is item 0, so the matrix was captured after RecBole's
``scores[:, 0] = -inf``; :meth:`MetricAccumulator.update` applies the same assignment itself.

Evaluation itself (:mod:`mlconnect.engine.evaluation`) never holds a users x items matrix: it
counts the items ahead of the positive chunk by chunk and hands the exact ranks to
:meth:`MetricAccumulator.update_ranks`; :meth:`MetricAccumulator.update` is the whole-matrix form.

Everything per row runs as batched tensor operations on the scores' device; only the positive's
0-based rank (one integer per row) is kept, and :meth:`MetricAccumulator.compute` turns the
collected ranks into float64 means on the CPU (float64 is not available on every accelerator).
"""

from __future__ import annotations

import math

import torch

from mlconnect.errors import ConfigError

METRICS = ("hit", "ndcg", "mrr", "recall", "precision")

# RecBole's metric names, lower-cased, to ours (they are the same words).
_ALIASES = {name: name for name in METRICS}
_SUPPORTED = "Hit, NDCG, MRR, Recall, Precision"


def _split_name(raw: object) -> tuple[str, int | None]:
    """``"NDCG"`` -> ("ndcg", None); ``"ndcg@10"`` -> ("ndcg", 10); raises ValueError when malformed."""
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"metric names are strings, got {raw!r}")
    text = raw.strip().lower()
    if "@" in text:
        base, _, k = text.partition("@")
        if not k.isdigit() or int(k) < 1:
            raise ValueError(f"{raw!r}: the part after '@' must be a positive integer")
        return base, int(k)
    return text, None


def parse_metric_names(metrics: list[str], topk: list[int] | int) -> list[str]:
    """Expand RecBole-style ``metrics`` and ``topk`` into ``["recall@10", "recall@20", "ndcg@10", ...]``.

    Names are case-insensitive (``Hit``, ``NDCG``, ``MRR``, ``Recall``, ``Precision``); a name that
    already carries its K (``"NDCG@10"``) stands for that K only. The order is metric by metric, then
    K ascending as given, without duplicates. Every problem is reported at once as a ``ConfigError``.
    """
    problems: list[str] = []
    ks: list[int] = []
    topk_list = [topk] if isinstance(topk, int) else topk
    if not isinstance(topk_list, (list, tuple)) or not topk_list:
        problems.append(f"topk: expected a positive integer or a list of them, got {topk!r}")
        topk_list = []
    for k in topk_list:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            problems.append(f"topk: {k!r} is not a positive integer")
        elif k not in ks:
            ks.append(k)
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, (list, tuple)) or not metrics:
        problems.append(f"metrics: expected a list of metric names, got {metrics!r}")
        metrics = []
    out: list[str] = []
    for raw in metrics:
        try:
            base, k = _split_name(raw)
        except ValueError as exc:
            problems.append(f"metrics: {exc}")
            continue
        if base not in _ALIASES:
            problems.append(f"metrics: unknown metric {raw!r} (supported: {_SUPPORTED})")
            continue
        for kk in [k] if k is not None else ks:
            name = f"{_ALIASES[base]}@{kk}"
            if name not in out:
                out.append(name)
    if problems:
        raise ConfigError(problems)
    return out


def mask_history_(scores: torch.Tensor, history: torch.Tensor,
                  keep: torch.Tensor | None = None) -> torch.Tensor:
    """Set ``scores[b, item] = -inf`` in place for every item in row ``b`` of ``history``; return ``scores``.

    ``history`` is ``[B, L]`` item indices padded with 0; the padding column is left as it was (the
    caller has already set it to ``-inf``). With ``keep`` (``[B]`` item indices, usually each row's
    positive), that item keeps its score even when it also occurs in the history: this is the
    "mask the history but never the target" protocol.
    """
    if history.numel() == 0:
        return scores
    history = history.to(device=scores.device, dtype=torch.long)
    col0 = scores[:, 0].clone()
    kept = None
    if keep is not None:
        keep = keep.to(device=scores.device, dtype=torch.long).reshape(-1, 1)
        kept = scores.gather(1, keep)
    scores.scatter_(1, history, float("-inf"))
    scores[:, 0] = col0
    if keep is not None and kept is not None:
        scores.scatter_(1, keep, kept)
    return scores


class MetricAccumulator:
    """Collects the positive's rank batch by batch; ``compute()`` gives the means over all rows seen.

    ``metrics`` are names like ``["hit", "ndcg"]`` (RecBole spelling and ``"ndcg@10"`` also accepted,
    see :func:`parse_metric_names`); ``topk`` the cut-offs. Per batch the work is one ``torch.topk``
    for the largest K and a comparison with the positive column: no Python loop per row, and no
    host-device synchronisation until ``compute()``.
    """

    def __init__(self, metrics: list[str], topk: list[int] | int) -> None:
        self.names = parse_metric_names(list(metrics), topk)
        self.max_k = max(int(n.split("@")[1]) for n in self.names)
        self._ranks: list[torch.Tensor] = []
        self.n_rows = 0

    def reset(self) -> None:
        self._ranks.clear()
        self.n_rows = 0

    @torch.no_grad()
    def update(self, scores: torch.Tensor, positive: torch.Tensor) -> None:
        """Rank one batch: ``scores`` ``[B, n_items]``, ``positive`` ``[B]`` item indices (never 0).

        The caller sets ``scores[:, 0] = -inf`` (padding is never ranked) and ``-inf`` on anything
        else it excludes; ``update`` also sets column 0 to ``-inf`` itself, in place, so padding can
        never be counted even if the caller forgot.
        """
        if scores.dim() != 2:
            raise ValueError(f"scores must be [batch, n_items], got shape {tuple(scores.shape)}")
        positive = positive.reshape(-1).to(device=scores.device, dtype=torch.long)
        if positive.shape[0] != scores.shape[0]:
            raise ValueError(f"{scores.shape[0]} score rows but {positive.shape[0]} positives")
        if scores.shape[0] == 0:
            return
        scores[:, 0] = float("-inf")
        k = min(self.max_k, scores.shape[1])
        top_idx = torch.topk(scores, k, dim=1).indices  # [B, k], same tie order as RecBole
        hits = top_idx == positive.unsqueeze(1)
        found = hits.any(dim=1)
        # argmax over a bool row is the first True; rows without a hit get rank max_k (never counted).
        rank = torch.where(found, hits.to(torch.uint8).argmax(dim=1), torch.full_like(positive, self.max_k))
        self._ranks.append(rank)
        self.n_rows += int(scores.shape[0])

    @torch.no_grad()
    def update_ranks(self, rank: torch.Tensor) -> None:
        """Add rows whose positive's 0-based rank is already known (chunked or sampled evaluation,
        :mod:`mlconnect.engine.evaluation`); ranks at or beyond the largest K are never counted."""
        rank = rank.reshape(-1).to(torch.long)
        self._ranks.append(rank.clamp(max=self.max_k))
        self.n_rows += int(rank.shape[0])

    def ranks(self) -> torch.Tensor:
        """0-based rank of each row's positive in its top-K list (``max_k`` when it is not there), on CPU."""
        if not self._ranks:
            return torch.empty(0, dtype=torch.long)
        return torch.cat([r.cpu() for r in self._ranks])

    def compute(self) -> dict[str, float]:
        """Means over every row passed to :meth:`update`, as ``{"hit@10": ..., "ndcg@10": ...}``."""
        rank = self.ranks().to(torch.float64)
        n = rank.numel()
        out: dict[str, float] = {}
        if n == 0:
            return {name: math.nan for name in self.names}
        position = rank + 1.0  # 1-based
        for name in self.names:
            metric, k_text = name.split("@")
            k = int(k_text)
            inside = (rank < k).to(torch.float64)
            if metric in ("hit", "recall"):
                value = inside
            elif metric == "precision":
                value = inside / k
            elif metric == "mrr":
                value = inside / position
            else:  # ndcg
                value = inside / torch.log2(position + 1.0)
            out[name] = float(value.sum().item() / n)
        return out
