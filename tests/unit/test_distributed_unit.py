"""DDP helpers that need no process group: sharding, the --nproc/--gpus plan, the torchrun argv."""

from __future__ import annotations

import sys

import pytest
import torch

from mlconnect.engine import ddp_launch
from mlconnect.engine.distributed import DistInfo, per_rank_batch, shard
from mlconnect.errors import UsageError


@pytest.mark.parametrize("n,world", [(10, 2), (11, 2), (7, 3), (1, 2)])
def test_shards_are_equal_and_cover_every_window(n, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    parts = [shard(order, DistInfo(r, world)) for r in range(world)]
    assert len({len(p) for p in parts}) == 1  # same steps on every rank: no rank waits in all-reduce
    assert set(torch.cat(parts).tolist()) == set(range(n))
    assert sum(len(p) for p in parts) - n < world  # padding wraps around by less than one per rank
    assert torch.equal(shard(order, DistInfo()), order)


def test_per_rank_batch_keeps_the_global_batch():
    assert per_rank_batch(40, DistInfo(0, 2)) == 20 and per_rank_batch(1, DistInfo(0, 4)) == 1


def test_plan(monkeypatch):
    monkeypatch.setattr(ddp_launch, "visible_gpus", lambda: 2)
    assert ddp_launch.plan(None, "0,1") == (2, "0,1")
    assert ddp_launch.plan(3, None) == (3, None)
    for nproc, gpus, words in ((None, "0,1,2,3", "asks for GPUs this machine does not have (2 GPU(s): 0, 1)"),
                               (None, "0,0", "does not have"), (None, "a", "not a list of GPU numbers"),
                               (3, "0,1", "--nproc 3 does not match --gpus 0,1"), (0, None, "at least 1")):
        with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
            ddp_launch.plan(nproc, gpus)


def test_torchrun_argv_keeps_the_run_marker(monkeypatch):
    monkeypatch.setattr(sys, "_xoptions", {"mlconnect-run": "abc"})
    argv = ddp_launch.torchrun_argv(2, ["--experiment", "e"])
    assert argv[:3] == [sys.executable, "-X", "mlconnect-run=abc"]
    assert argv[3:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--local-ranks-filter=0",
                        "-m", "mlconnect", "train", "--experiment", "e"]
