"""SASRec (Kang & McAuley, 2018) with RecBole's layout, keys and defaults.

Sequences are right-padded, so with causal attention a real position never attends to padding:
``is_causal`` alone is the right mask, and SDPA can use its fused kernels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mlconnect.engine.models.base import SequentialRecommender, init_normal_
from mlconnect.engine.models.transformer import encoder_from


class SASRec(SequentialRecommender):
    def __init__(self, cfg: Mapping[str, Any], n_items: int) -> None:
        super().__init__()
        h = cfg["hidden_size"]
        self.n_items = n_items
        self.item_embedding = nn.Embedding(n_items, h, padding_idx=0)
        self.position_embedding = nn.Embedding(cfg["MAX_ITEM_LIST_LENGTH"], h)
        self.norm = nn.LayerNorm(h, eps=cfg["layer_norm_eps"])
        self.dropout = nn.Dropout(cfg["hidden_dropout_prob"])
        self.encoder = encoder_from(cfg)
        self.apply(lambda m: init_normal_(m, cfg["initializer_range"]))

    def embed(self, items: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(items.shape[1], device=items.device)
        return self.dropout(self.norm(self.item_embedding(items) + self.position_embedding(pos)))

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(items), causal=True)

    def last_hidden(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Right padding and causal attention: the last real position sees every real item, and only its
        # output is read, so the last layer runs there alone (the engine's scoring and the export alike).
        return self.encoder.forward_at(self.embed(items), (lengths - 1).clamp(min=0), causal=True)

    def item_table(self) -> torch.Tensor:
        return self.item_embedding.weight
