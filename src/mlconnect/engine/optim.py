"""Row-sparse updates of a large item table: Adam/AdamW that touches only the rows a step used.

With a sampled loss (shared negatives, gBCE, BPR) one step reads a few thousand rows of a
200k x 64 item table, yet a dense gradient and a dense AdamW step write all 12.8M weights and
both moment buffers every step: on a CPU that memory traffic costs more than the encoder
(``benchmarks/catalog_bench.py``). With ``sparse_item_grad`` the table's embedding returns a
sparse gradient and :class:`LazyAdamW` updates the moments, the weight decay and the weights of
those rows only (TensorFlow's LazyAdam; RecBole has no equivalent). Rows a step does not touch
keep their weights, where dense Adam would still move them by their old momentum, so the
numerics differ from dense AdamW: the mode is used only where ``sparse_rows`` says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mlconnect.errors import MlconnectError


class LazyAdamW(torch.optim.Optimizer):
    """Adam (``decoupled=False``: L2 added to the gradient) or AdamW (decoupled decay) whose step
    updates only the rows present in a sparse gradient. Bias correction uses the global step
    count, as ``torch.optim.SparseAdam`` does. A dense gradient updates every row (plain Adam/AdamW)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = True) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "decoupled": decoupled})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    g = p.grad.coalesce()
                    rows, vals = g.indices()[0], g.values()
                else:
                    rows, vals = torch.arange(p.shape[0], device=p.device), p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                w = p[rows]
                if wd and not group["decoupled"]:
                    vals = vals + wd * w
                m = state["exp_avg"][rows].mul_(b1).add_(vals, alpha=1 - b1)
                v = state["exp_avg_sq"][rows].mul_(b2).addcmul_(vals, vals, value=1 - b2)
                state["exp_avg"][rows] = m
                state["exp_avg_sq"][rows] = v
                if wd and group["decoupled"]:
                    w.mul_(1 - lr * wd)
                # torch's Adam: p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
                denom = (v.sqrt() / (1 - b2 ** t) ** 0.5).add_(eps)
                w.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))
                p[rows] = w
        return loss


class SplitOptimizer:
    """Two optimizers as one (the trainer's step / zero_grad / state_dict / param_groups):
    the dense parameters' usual optimizer and :class:`LazyAdamW` for the sparse item table."""

    def __init__(self, dense: torch.optim.Optimizer, sparse: LazyAdamW) -> None:
        self.dense, self.sparse = dense, sparse

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [*self.dense.param_groups, *self.sparse.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Any = None) -> None:
        self.dense.step()
        self.sparse.step()

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"dense", "sparse"}:
            raise MlconnectError("the checkpoint's optimizer state was saved with a dense item table",
                                 "resume with the sparse_item_grad setting the run was started with")
        self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["sparse"])


def sparse_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The weights of embeddings switched to sparse gradients (``nn.Embedding.sparse``)."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse]
