"""SASRec computes its last layer at each sequence's last position only: the same hidden state as the
whole encoder read out there (the engine's scoring and the exported graphs rely on it)."""

from __future__ import annotations

import torch

from mlconnect.engine.config import load_config
from mlconnect.engine.models import build_model
from mlconnect.engine.models.base import SequentialRecommender


def test_sasrec_last_hidden_equals_the_whole_encoder_read_at_the_last_item() -> None:
    torch.manual_seed(0)
    cfg = load_config(None, {"model": "SASRec", "dataset": "x", "MAX_ITEM_LIST_LENGTH": 12, "n_layers": 3})
    model = build_model(cfg, 300).eval()
    lengths = torch.tensor([1, 2, 5, 11, 12, 12, 7, 1])
    items = torch.randint(1, 300, (len(lengths), 12))
    items[torch.arange(12)[None] >= lengths[:, None]] = 0  # right padding, as every caller feeds it
    with torch.no_grad():
        fast = model.last_hidden(items, lengths)
        whole = SequentialRecommender.last_hidden(model, items, lengths)  # encode everything, then read
        trimmed = model.last_hidden(items[:, :8], lengths.clamp(max=8))   # a shorter padded width
    assert fast.shape == (len(lengths), cfg["hidden_size"])
    torch.testing.assert_close(fast, whole, rtol=0, atol=1e-5)
    short = lengths <= 8
    torch.testing.assert_close(trimmed[short], whole[short], rtol=0, atol=1e-5)
