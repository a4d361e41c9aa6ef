"""DDP helpers that need no process group: sharding, the --nproc/--gpus plan, the torchrun argv."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

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
    assert argv[3:] == ["-m", "mlconnect.engine.ddp_launch", "--standalone", "--nproc-per-node=2",
                        "--local-ranks-filter=0", "-m", "mlconnect", "train", "--experiment", "e"]


def test_a_torchrun_stopped_by_a_signal_is_recorded_stopped(tmp_path):
    # torchrun raises SignalException after its ranks have checkpointed; ddp_launch exits 128+N for it,
    # the status a one-process trainer that caught the signal exits with, which the supervisor maps.
    from torch.distributed.elastic.multiprocessing import SignalException

    from mlconnect.layout import ExperimentPaths
    from mlconnect.runs.launcher import _final_state

    exc = SignalException("got signal", sigval=signal.SIGTERM)
    assert ddp_launch.signal_exit_code(exc.sigval) == 143 == 128 + signal.SIGTERM
    assert ddp_launch.signal_exit_code(signal.SIGINT) == 130
    paths = ExperimentPaths(tmp_path / "e")  # no progress.json, no stop request: the exit status alone decides
    assert _final_state(ddp_launch.signal_exit_code(exc.sigval), False, paths) == "stopped"
    assert _final_state(1, False, paths) == "failed"  # what plain torchrun exited with: read as a failure


def test_a_rank_dies_with_its_parent(tmp_path):
    # torchrun starts ranks in their own sessions; were it SIGKILLed, they must not run on unsupervised.
    pidfile = tmp_path / "child.pid"
    child = ("import os, sys, time; from mlconnect.engine.distributed import die_with_parent; die_with_parent(); "
             f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               f"subprocess.Popen([sys.executable, '-c', {child!r}], start_new_session=True); "
                               "time.sleep(60)"])
    try:
        deadline = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int(pidfile.read_text())
        os.kill(pid, 0)  # alive while its parent is
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    survived = _alive(pid)
    if survived:
        os.kill(pid, signal.SIGKILL)
    assert not survived


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie awaiting its reaper is gone
    except FileNotFoundError:
        return False
