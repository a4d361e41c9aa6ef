"""What every sequential model shares: losses at every position and full-catalog scoring.

A model maps right-padded item sequences ``[B, L]`` (0 = padding) to one hidden state per
position ``[B, L, H]``; scores are dot products with the item embedding table, as in RecBole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SequentialRecommender(nn.Module):
    """Base class: subclasses implement ``encode`` and ``item_table``."""

    n_items: int  # embedding rows for real items, padding (0) included

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` item ids -> ``[B, L, H]`` hidden states (position i has seen items[:i+1])."""
        raise NotImplementedError

    def item_table(self) -> torch.Tensor:
        """``[n_items, H]`` output embeddings (row 0 is padding)."""
        raise NotImplementedError

    def output_bias(self) -> torch.Tensor | None:
        return None

    # --- training -------------------------------------------------------------------------------
    def training_loss(self, inputs: torch.Tensor, targets: torch.Tensor, loss_type: str,
                      sampled_negatives: int = 0) -> torch.Tensor:
        """Next-item loss at every position whose target is not padding."""
        hidden = self.encode(inputs)
        keep = targets > 0
        return self.loss_at(hidden[keep], targets[keep], loss_type, sampled_negatives)

    def loss_at(self, h: torch.Tensor, targets: torch.Tensor, loss_type: str, sampled_negatives: int) -> torch.Tensor:
        """CE over the catalog, sampled softmax with shared negatives, or BPR with one negative."""
        table, bias = self.item_table(), self.output_bias()
        if loss_type == "BPR":
            neg = torch.randint(1, self.n_items, targets.shape, device=targets.device)
            pos_s = (h * table[targets]).sum(-1)
            neg_s = (h * table[neg]).sum(-1)
            return -F.logsigmoid(pos_s - neg_s).mean()
        if sampled_negatives:
            # Negatives shared across the batch: one [N, K] matmul instead of [N, n_items].
            neg = torch.randint(1, self.n_items, (sampled_negatives,), device=targets.device)
            pos_logit = (h * table[targets]).sum(-1, keepdim=True)
            neg_logit = h @ table[neg].T
            if bias is not None:
                pos_logit = pos_logit + bias[targets].unsqueeze(-1)
                neg_logit = neg_logit + bias[neg]
            neg_logit = neg_logit.masked_fill(neg.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
            logits = torch.cat([pos_logit, neg_logit], dim=1).float()
            return F.cross_entropy(logits, torch.zeros_like(targets))
        logits = h @ table.T
        if bias is not None:
            logits = logits + bias
        return F.cross_entropy(logits.float(), targets)

    # --- inference ------------------------------------------------------------------------------
    def last_hidden(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Hidden state after each sequence's last real item: ``[B, H]``."""
        hidden = self.encode(items)
        idx = (lengths - 1).clamp(min=0)
        return hidden[torch.arange(len(items), device=items.device), idx]

    def full_scores(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Scores for every item, ``[B, n_items]``; padding gets -inf so it is never ranked."""
        h = self.last_hidden(items, lengths)
        scores = h @ self.item_table().T
        bias = self.output_bias()
        if bias is not None:
            scores = scores + bias
        scores = scores.float()
        scores[:, 0] = float("-inf")
        return scores


def init_normal_(module: nn.Module, std: float) -> None:
    """RecBole's transformer init: N(0, std) weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=std)
    elif isinstance(module, nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
