"""What every sequential model shares: losses at every position and full-catalog scoring.

A model maps right-padded item sequences ``[B, L]`` (0 = padding) to one hidden state per
position ``[B, L, H]``; scores are dot products with the item embedding table, as in RecBole.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from mlconnect.engine.losses import LossOptions, next_item_loss


class SequentialRecommender(nn.Module):
    """Base class: subclasses implement ``encode`` and ``item_table``."""

    n_items: int  # embedding rows for real items, padding (0) included
    # Positions scoring needs past a history's last item (BERT4Rec reads out at a mask token there): how
    # far predict and the bundle may trim right padding (deploy.bundle.pad_batch).
    length_slot = 0
    loss_options = LossOptions()  # build_model sets the config's (gbce_t, loss_chunk_size, ...)

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
        """The configured next-item loss (mlconnect.engine.losses): chunked CE, sampled softmax, gBCE or BPR."""
        opts = replace(self.loss_options, loss_type=loss_type, sampled_negatives=sampled_negatives)
        return next_item_loss(h, targets, self.item_table(), self.output_bias(), opts)

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
