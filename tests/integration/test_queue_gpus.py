"""The GPU-aware queue: on a box with two GPUs (a fake nvidia-smi), two queued runs run together,
one GPU each; a third waits for a free GPU. Real detached processes, real locks."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from mlconnect.layout import ExperimentPaths
from mlconnect.runs import launcher, store

CHILD = """
import os, sys, time
stamp = sys.argv[2]
open(stamp, "a").write(f"start {time.time()} {os.environ.get('CUDA_VISIBLE_DEVICES')}\\n")
time.sleep(float(sys.argv[1]))
open(stamp, "a").write(f"end {time.time()} -\\n")
"""
TWO_GPUS = """#!/bin/sh
echo "0, NVIDIA GeForce RTX 3090, 37, 12, 1024, 24576, 55, 120.50"
echo "1, NVIDIA GeForce RTX 3090, 0, 0, 10, 24576, 40, 30.00"
"""


@pytest.fixture
def proj(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLCONNECT_QUEUE_DIR", str(tmp_path / "queue"))
    monkeypatch.setenv("MLCONNECT_HEARTBEAT_S", "0.5")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text(TWO_GPUS)
    (fake / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "child.py").write_text(CHILD)
    return tmp_path


def _start(proj: Path, name: str, seconds: float) -> ExperimentPaths:
    paths = ExperimentPaths(proj / "experiments" / name)
    paths.root.mkdir(parents=True)
    rid = launcher.new_run_id()
    argv = [sys.executable, "-X", f"mlconnect-run={rid}", str(proj / "child.py"), str(seconds),
            str(paths.root / "stamps")]
    launcher.start_run(paths, argv, run_id=rid, queue=True)
    return paths


def _done(paths: ExperimentPaths) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = launcher.reconcile(paths) or {}
        if st.get("state") not in launcher.ACTIVE:
            return st
        time.sleep(0.1)
    raise AssertionError(f"{paths.name} did not finish")


def _stamps(paths: ExperimentPaths) -> dict[str, tuple[float, str]]:
    rows = [line.split() for line in (paths.root / "stamps").read_text().splitlines()]
    return {k: (float(t), gpu) for k, t, gpu in rows}


def test_two_queued_runs_share_a_two_gpu_box_and_a_third_waits(proj):
    a, b = _start(proj, "a", 3.0), _start(proj, "b", 3.0)
    c = _start(proj, "c", 0.2)
    for p in (a, b, c):
        assert _done(p)["state"] == "succeeded"
    sa, sb, sc = _stamps(a), _stamps(b), _stamps(c)
    assert {sa["start"][1], sb["start"][1]} == {"0", "1"}  # one GPU each ...
    assert sb["start"][0] < sa["end"][0] and sa["start"][0] < sb["end"][0]  # ... at the same time
    assert sc["start"][0] >= min(sa["end"][0], sb["end"][0])  # the third waited for a free GPU
    assert {launcher.read_status(p)["gpu_index"] for p in (a, b)} == {0, 1}
    rows = {r["name"]: r["gpu_index"] for r in store.list_experiments(proj)}  # ps shows the GPU each holds
    assert rows["a"] == launcher.read_status(a)["gpu_index"] and rows["c"] in (0, 1)
