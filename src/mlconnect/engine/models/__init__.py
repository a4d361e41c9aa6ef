"""The model registry: RecBole's model names -> classes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from mlconnect.engine.losses import LossOptions
from mlconnect.engine.models.base import SequentialRecommender
from mlconnect.engine.models.bert4rec import BERT4Rec
from mlconnect.engine.models.gru4rec import GRU4Rec
from mlconnect.engine.models.sasrec import SASRec

REGISTRY: dict[str, type[SequentialRecommender]] = {"SASRec": SASRec, "GRU4Rec": GRU4Rec, "BERT4Rec": BERT4Rec}


def build_model(cfg: Mapping[str, Any], n_items: int, sparse_rows: bool = False) -> SequentialRecommender:
    """A model for ``cfg["model"]`` over ``n_items`` item ids (padding included). ``sparse_rows``
    (``runtime.sparse_rows``): the item table gets row-sparse gradients, for ``LazyAdamW``."""
    model = REGISTRY[cfg["model"]](cfg, n_items)
    model.loss_options = replace(LossOptions.from_config(cfg), sparse=sparse_rows)
    if sparse_rows:
        model.item_embedding.sparse = True
    return model


__all__ = ["REGISTRY", "SequentialRecommender", "build_model"]
