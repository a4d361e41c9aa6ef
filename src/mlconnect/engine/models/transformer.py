"""A post-LayerNorm transformer block in RecBole's layout, with attention through SDPA."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "swish": F.silu, "silu": F.silu, "tanh": torch.tanh,
               "sigmoid": torch.sigmoid}


class TransformerLayer(nn.Module):
    """Self-attention -> dropout -> add & norm -> feed-forward -> dropout -> add & norm."""

    def __init__(self, hidden: int, n_heads: int, inner: int, hidden_dropout: float, attn_dropout: float,
                 act: str, eps: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden, eps=eps)
        self.ff_in = nn.Linear(hidden, inner)
        self.ff_out = nn.Linear(inner, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(hidden_dropout)
        self.act = ACTIVATIONS[act.lower()]

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        b, length, h = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.n_heads, h // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        x = self.norm1(x + self.dropout(self.attn_out(a.transpose(1, 2).reshape(b, length, h))))
        return self.norm2(x + self.dropout(self.ff_out(self.act(self.ff_in(x)))))

    def forward_at(self, x: torch.Tensor, at: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The output at one position per row, ``[B, H]`` (inference): the query there attends to the
        ``keys`` (``[B, 1, 1, L]`` bool) of every position; no other position's output is computed.
        Gathers rather than indexes with ``arange(B)``, so a trace keeps the batch dynamic."""
        b, length, h = x.shape
        pick = at.view(-1, 1, 1)
        qkv = self.qkv(x)
        q = qkv.gather(1, pick.expand(-1, 1, 3 * h))[..., :h].view(b, 1, self.n_heads, h // self.n_heads)
        k, v = qkv[..., h:].view(b, length, 2, self.n_heads, h // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=keys)   # [B, heads, 1, d]
        x_at = x.gather(1, pick.expand(-1, 1, h)).squeeze(1)
        y = self.norm1(x_at + self.attn_out(a.transpose(1, 2).reshape(b, h)))
        return self.norm2(y + self.ff_out(self.act(self.ff_in(y))))


class TransformerEncoder(nn.Module):
    def __init__(self, n_layers: int, **layer_kw) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(**layer_kw) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, attn_mask=attn_mask, causal=causal)
        return x

    def forward_at(self, x: torch.Tensor, at: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """``forward(x, causal=causal)[i, at[i]]`` for a right-padded batch, computing the last layer at
        those positions only (its feed-forward is most of a layer: ~40% of a 2-layer encoder's work)."""
        for layer in self.layers[:-1]:
            x = layer(x, causal=causal)
        positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        keys = positions <= at.unsqueeze(1) if causal else torch.ones_like(positions, dtype=torch.bool)
        return self.layers[-1].forward_at(x, at, keys.view(-1, 1, 1, x.shape[1]))


def encoder_from(cfg: Mapping[str, Any]) -> TransformerEncoder:
    """The encoder of SASRec and BERT4Rec, sized by the RecBole config keys both share."""
    return TransformerEncoder(
        cfg["n_layers"], hidden=cfg["hidden_size"], n_heads=cfg["n_heads"], inner=cfg["inner_size"],
        hidden_dropout=cfg["hidden_dropout_prob"], attn_dropout=cfg["attn_dropout_prob"],
        act=cfg["hidden_act"], eps=cfg["layer_norm_eps"])
