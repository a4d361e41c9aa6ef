"""What the config picks for a run besides the model: the device, the autocast dtype, the optimizer."""

from __future__ import annotations

from typing import Any

import torch

from mlconnect.engine.config import Config
from mlconnect.errors import MlconnectError


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


def make_optimizer(cfg: Config, params: Any) -> torch.optim.Optimizer:
    lr, wd = cfg["learning_rate"], cfg["weight_decay"]
    return {
        "adam": lambda: torch.optim.Adam(params, lr=lr, weight_decay=wd),
        "adamw": lambda: torch.optim.AdamW(params, lr=lr, weight_decay=wd),
        "sgd": lambda: torch.optim.SGD(params, lr=lr, weight_decay=wd),
        "adagrad": lambda: torch.optim.Adagrad(params, lr=lr, weight_decay=wd),
        "rmsprop": lambda: torch.optim.RMSprop(params, lr=lr, weight_decay=wd),
    }[cfg["learner"]]()
