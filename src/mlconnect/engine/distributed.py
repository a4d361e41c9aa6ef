"""Rank-aware helpers for DistributedDataParallel training under torchrun (see docs/SCALING.md).

``mlconnect train --nproc N`` starts torchrun (``python -m mlconnect.engine.ddp_launch --standalone
--nproc-per-node N -m mlconnect train ...``, see :mod:`mlconnect.engine.ddp_launch`); each rank runs
the ordinary trainer, which asks this module what it is. With no torchrun environment everything
here is a no-op, so a plain run pays nothing. The rules the trainer follows:

* every rank trains on its own shard of the epoch's (identically seeded) window order; the per-rank
  batch is the global batch divided by the world size, so steps per epoch and the optimisation
  match a single process;
* every rank evaluates the full validation set on identical weights, so early stopping decides
  the same everywhere without a broadcast; only rank 0 writes files;
* a stop signal on any rank is all-reduced each step, and only that reduced flag decides: every
  rank stops at the same step. torchrun sends each rank the signal once (the ranks live in their
  own sessions: a signal to torchrun's process group reaches torchrun alone).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """What torchrun told this process (RANK, WORLD_SIZE, LOCAL_RANK); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def is_rank_process() -> bool:
    """True inside a rank torchrun started: never hand over to a host or start torchrun again."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_name: str) -> tuple[DistInfo, torch.device | None]:
    """Join the process group: NCCL on CUDA (one GPU per local rank), gloo on CPU.

    Returns the info and, for CUDA ranks, the device this rank must use (None: the caller picks).
    """
    import torch.distributed as dist

    info = env_info()
    if not info.enabled:
        return info, None
    die_with_parent()
    cuda = device_name in ("auto", "cuda") and torch.cuda.is_available() or device_name.startswith("cuda")
    backend = "nccl" if cuda else "gloo"
    device = None
    if cuda:
        torch.cuda.set_device(info.local_rank)
        device = torch.device("cuda", info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(info.rank, info.world_size, info.local_rank, backend), device


def die_with_parent() -> None:
    """Linux: this rank gets SIGKILL when torchrun dies. torchrun starts each rank in its own session,
    so when ``stop`` SIGKILLs an unresponsive torchrun after its grace, the ranks would otherwise
    go on unsupervised, still writing the experiment after its run was recorded as ended."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG


def teardown(info: DistInfo) -> None:
    import torch.distributed as dist

    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shard(order: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's share of an epoch's window order (DistributedSampler's rule, seeded by the caller).

    The order is padded by wrapping around to a multiple of the world size, so every rank takes the
    same number of windows and the ranks together cover every window at least once.
    """
    if not info.enabled:
        return order
    total = -(-len(order) // info.world_size) * info.world_size
    if total > len(order):
        order = torch.cat([order, order[: total - len(order)]])
    return order[info.rank::info.world_size]


def per_rank_batch(per_batch: int, info: DistInfo) -> int:
    return max(1, per_batch // info.world_size)


def all_reduce(value: torch.Tensor, info: DistInfo, op: str = "sum") -> torch.Tensor:
    """Sum (or max, or mean) of ``value`` over the ranks, returned on every rank."""
    if not info.enabled:
        return value
    import torch.distributed as dist

    t = value.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t / info.world_size if op == "mean" else t


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on one (a stop signal that reached only some ranks).

    Act on this result only, never on the local flag read again afterwards: a signal that arrives
    while a rank waits in this all-reduce is handled when the call returns, after the ranks agreed
    to go on. Re-reading the flag then stopped that rank alone, and the others failed in the next
    step's gradient all-reduce with a dead peer (`stop` left DDP runs failed). Such a signal is
    counted at the next call.
    """
    if not info.enabled:
        return flag
    return bool(all_reduce(torch.tensor(float(flag), device=device), info, "max").item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


class LossModule(torch.nn.Module):
    """DDP synchronises gradients only through ``forward``: route ``training_loss`` through it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> torch.Tensor:
        return self.model.training_loss(*args)


class LossModel:
    """Looks like the model to the trainer (``training_loss``), computes it through ``forward`` of a
    wrapper around LossModule: DDP (which syncs gradients only there), torch.compile (which compiles
    ``forward``, never ``training_loss``), or DDP inside compile (the order torch recommends)."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def training_loss(self, *args: Any) -> torch.Tensor:
        return self.module(*args)


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device, *, compile: bool = False) -> Any:
    """The trainer's forward model: the model itself, or LossModel over DDP and/or torch.compile."""
    if not info.enabled and not compile:
        return model
    module: Any = LossModule(model)
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        module = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    return LossModel(torch.compile(module) if compile else module)


class Null:
    """Stands in for the writers (TensorBoard, progress file, reporter, tracker) on ranks above 0."""

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None

    def __bool__(self) -> bool:
        return False
