"""What the config picks for a run besides the model: the device, the autocast dtype, the optimizer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlconnect.engine.config import Config
from mlconnect.engine.optim import LazyAdamW, SplitOptimizer, sparse_parameters
from mlconnect.errors import ConfigError, MlconnectError

# sparse_item_grad: auto turns row-sparse updates of the item table on from this catalog size
# (padding included). Below it a dense step is cheap; ml-100k (1.7k items) never reaches it.
SPARSE_MIN_ITEMS = 50_000


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MlconnectError("device cuda was asked for but CUDA is not available",
                             "set device: auto or cpu, or check the GPU driver with nvidia-smi")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise MlconnectError("device mps was asked for but MPS is not available", "set device: auto or cpu")
    return dev


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA (where supported) and MPS when enable_amp is auto or true."""
    if cfg["enable_amp"] is False or device.type == "cpu":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def sparse_rows(cfg: Config, n_items: int, device: torch.device, world_size: int = 1) -> bool:
    """Whether the item table gets sparse gradients and :class:`LazyAdamW` (``sparse_item_grad``).

    ``auto``: on a CPU, with a sampled loss (the full-catalog CE's gradient is dense anyway), adam or
    adamw, a catalog of ``SPARSE_MIN_ITEMS`` or more, and none of compile, DDP or gradient clipping
    (none of them takes sparse gradients). ``true`` asks for it wherever it can work.
    """
    mode = cfg["sparse_item_grad"]
    if mode is False:
        return False
    blockers = [why for why, bad in (
        ("learner must be adam or adamw", cfg["learner"] not in ("adam", "adamw")),
        ("a sampled loss is needed (sampled_negatives > 0, gBCE or BPR)",
         cfg["loss_type"] != "BPR" and not cfg["sampled_negatives"]),
        ("the model must be SASRec or GRU4Rec", cfg["model"] not in ("SASRec", "GRU4Rec")),
        ("compile: true cannot trace sparse gradients", bool(cfg["compile"])),
        ("DDP does not all-reduce them", world_size > 1),
        ("clip_grad_norm does not take them", bool(cfg["clip_grad_norm"])),
    ) if bad]
    if mode is True:
        if blockers:
            raise ConfigError([f"sparse_item_grad: true, but {'; '.join(blockers)}"])
        return True
    return not blockers and device.type == "cpu" and n_items >= SPARSE_MIN_ITEMS


def make_optimizer(cfg: Config, params: Any) -> Any:
    """The configured learner over ``params`` (a model or its parameters); a model whose item
    table has sparse gradients (``sparse_rows``) gets :class:`LazyAdamW` for that table."""
    lr, wd = cfg["learning_rate"], cfg["weight_decay"]
    if isinstance(params, nn.Module):
        sparse = sparse_parameters(params)
        ids = {id(p) for p in sparse}
        dense = [p for p in params.parameters() if id(p) not in ids]
        if sparse:
            lazy = LazyAdamW(sparse, lr=lr, weight_decay=wd, decoupled=cfg["learner"] == "adamw")
            return SplitOptimizer(_dense_optimizer(cfg, dense), lazy)
        params = dense
    return _dense_optimizer(cfg, params)


def _dense_optimizer(cfg: Config, params: Any) -> torch.optim.Optimizer:
    lr, wd = cfg["learning_rate"], cfg["weight_decay"]
    return {
        "adam": lambda: torch.optim.Adam(params, lr=lr, weight_decay=wd),
        "adamw": lambda: torch.optim.AdamW(params, lr=lr, weight_decay=wd),
        "sgd": lambda: torch.optim.SGD(params, lr=lr, weight_decay=wd),
        "adagrad": lambda: torch.optim.Adagrad(params, lr=lr, weight_decay=wd),
        "rmsprop": lambda: torch.optim.RMSprop(params, lr=lr, weight_decay=wd),
    }[cfg["learner"]]()
