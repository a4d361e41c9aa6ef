"""GRU4Rec (Hidasi et al.; Tan et al. improvements) with RecBole's layout, keys and defaults."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mlconnect.engine.models.base import SequentialRecommender


class GRU4Rec(SequentialRecommender):
    def __init__(self, cfg: Mapping[str, Any], n_items: int) -> None:
        super().__init__()
        self.n_items = n_items
        e, h = cfg["embedding_size"], cfg["hidden_size"]
        self.item_embedding = nn.Embedding(n_items, e, padding_idx=0)
        self.emb_dropout = nn.Dropout(cfg["dropout_prob"])
        self.gru = nn.GRU(e, h, num_layers=cfg["num_layers"], bias=False, batch_first=True)
        self.dense = nn.Linear(h, e)
        nn.init.xavier_normal_(self.item_embedding.weight)
        for name, p in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(p)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        # Right padding: outputs at real positions never depend on the padding after them.
        out, _ = self.gru(self.emb_dropout(self.item_embedding(items)))
        return self.dense(out)

    def item_table(self) -> torch.Tensor:
        return self.item_embedding.weight
