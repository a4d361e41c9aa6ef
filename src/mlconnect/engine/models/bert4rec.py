"""BERT4Rec (Sun et al., 2019) with RecBole's layout, keys and defaults.

Training masks items at random (``mask_ratio``) and predicts them from both sides; with
probability ``ft_ratio`` a sequence has only its last item masked, which is what prediction does:
the last ``L - 1`` items plus a mask token, read out at the mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mlconnect.engine.models.base import SequentialRecommender, init_normal_
from mlconnect.engine.models.transformer import ACTIVATIONS, encoder_from


class BERT4Rec(SequentialRecommender):
    length_slot = 1  # the mask token after the last item
    def __init__(self, cfg: Mapping[str, Any], n_items: int) -> None:
        super().__init__()
        h = cfg["hidden_size"]
        self.n_items = n_items
        self.mask_token = n_items  # one extra embedding row
        self.max_len = cfg["MAX_ITEM_LIST_LENGTH"]
        self.mask_ratio = cfg["mask_ratio"]
        self.ft_ratio = cfg.get("ft_ratio", 0.0)
        self.item_embedding = nn.Embedding(n_items + 1, h, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_len, h)
        self.norm = nn.LayerNorm(h, eps=cfg["layer_norm_eps"])
        self.dropout = nn.Dropout(cfg["hidden_dropout_prob"])
        self.encoder = encoder_from(cfg)
        self.head = nn.Linear(h, h)
        self.head_act = ACTIVATIONS[cfg["hidden_act"].lower()]
        self.head_norm = nn.LayerNorm(h, eps=cfg["layer_norm_eps"])
        self.bias = nn.Parameter(torch.zeros(n_items))
        self.apply(lambda m: init_normal_(m, cfg["initializer_range"]))

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(items.shape[1], device=items.device)
        x = self.dropout(self.norm(self.item_embedding(items) + self.position_embedding(pos)))
        pad = (items > 0).view(items.shape[0], 1, 1, items.shape[1])  # keys that are real items
        x = self.encoder(x, attn_mask=pad)
        return self.head_norm(self.head_act(self.head(x)))

    def item_table(self) -> torch.Tensor:
        return self.item_embedding.weight[: self.n_items]

    def output_bias(self) -> torch.Tensor:
        return self.bias

    def training_loss(self, inputs: torch.Tensor, targets: torch.Tensor, loss_type: str,
                      sampled_negatives: int = 0) -> torch.Tensor:
        # The window's targets (its items after the first) form the sequence; mask some, predict them.
        seq = targets
        real = seq > 0
        masked = (torch.rand(seq.shape, device=seq.device) < self.mask_ratio) & real
        lengths = real.sum(1)
        last = (lengths - 1).clamp(min=0)
        rows = torch.arange(len(seq), device=seq.device)
        only_last = torch.rand(len(seq), device=seq.device) < self.ft_ratio
        none = ~masked.any(1)
        last_mask = torch.zeros_like(masked)
        last_mask[rows, last] = True
        masked = torch.where((only_last | none).unsqueeze(1), last_mask & real, masked)
        x = seq.masked_fill(masked, self.mask_token)
        hidden = self.encode(x)
        return self.loss_at(hidden[masked], seq[masked], loss_type, sampled_negatives)

    def last_hidden(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Keep the last L-1 items and append the mask token where the next item would go.
        b, length = items.shape
        idx = torch.arange(length, device=items.device).unsqueeze(0)
        start = (lengths - (self.max_len - 1)).clamp(min=0)
        src = (idx + start.unsqueeze(1)).clamp(max=length - 1)
        shifted = torch.gather(items, 1, src)
        new_len = (lengths - start).clamp(max=self.max_len - 1)
        shifted = shifted.masked_fill(idx >= new_len.unsqueeze(1), 0)[:, : self.max_len]
        if shifted.shape[1] < self.max_len:
            shifted = nn.functional.pad(shifted, (0, self.max_len - shifted.shape[1]))
        rows = torch.arange(b, device=items.device)
        shifted[rows, new_len] = self.mask_token
        return self.encode(shifted)[rows, new_len]
