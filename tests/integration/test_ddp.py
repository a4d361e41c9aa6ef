"""DDP on CPU: `train --nproc 2` is two real gloo processes under real torchrun, detached and supervised."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from runs_support import cli_env, mlc, ps_json, read_json, wait_for, write_project, write_tiny_dataset

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture
def project(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    root = tmp_path / "proj"
    root.mkdir()
    write_project(root, data, epochs=12)
    return root, cli_env(tmp_path)


def test_gpus_the_box_lacks_is_one_line(project):
    root, env = project
    cp = mlc(["train", "--config", "configs/tiny.yaml", "--gpus", "0,1,2,3"], root, env, check=False)
    assert cp.returncode == 2 and len(cp.stderr.strip().splitlines()) == 1, cp.stderr
    assert cp.stderr.startswith("error: --gpus 0,1,2,3 asks for GPUs this machine does not have")
    assert not (root / "experiments").exists()


def test_nproc_2_detached_stop_checkpoints_once_and_resumes(project):
    root, env = project
    mlc(["train", "--detach", "--config", "configs/tiny.yaml", "--experiment", "d", "--nproc", "2",
         "--set", "stopping_step=100"], root, env)
    exp = root / "experiments" / "d"
    wait_for(lambda: (read_json(exp / "checkpoints" / "last.json") or {}).get("epoch", 0) >= 1, timeout=150,
             what="a first checkpoint")
    assert ps_json(root, env)["d"]["world_size"] == 2
    st = json.loads(mlc(["stop", "d", "--json"], root, env).stdout)
    assert st["state"] == "stopped"
    log = (exp / "training.log").read_text()
    # Rank 0 alone says so, on the stderr it inherits from torchrun: training.log itself, no relay.
    assert log.count("stopped by SIGTERM") == 1, log[-3000:]
    assert "exited with code 143: stopped" in log and "Traceback" not in log  # torchrun's clean stop: 128+SIGTERM
    assert (read_json(exp / "progress.json") or {})["state"] == "stopped"
    at = read_json(exp / "checkpoints" / "last.json")["epoch"]
    mlc(["resume", "d"], root, env)
    wait_for(lambda: (read_json(exp / "status.json") or {}).get("state") == "succeeded", timeout=200,
             what="the resumed run to finish")
    log = (exp / "training.log").read_text()
    resumed = [ln for ln in log.splitlines() if "starting:" in ln and "--resume" in ln]
    assert resumed and "--nproc 2" in resumed[-1]  # resumed with as many ranks as it had
    res = read_json(exp / "results" / "metrics.json")
    assert res["world_size"] == 2 and res["epochs"] == 12 and at < 12
    # Only rank 0 writes: each epoch is logged once, one TensorBoard writer per start.
    assert log.count("epoch 12 valid mrr@10") == 1
    assert len(list((exp / "logs").glob("events.out.tfevents.*"))) == 2


def test_a_signal_just_after_the_stop_flag_reduce_stops_both_ranks_at_one_step(tmp_path):
    """The race behind `stop` leaving a 2-rank run failed: a SIGTERM handled on one rank right after the
    ranks had agreed to go on made that rank stop alone; the other went into the next step's gradient
    all-reduce with a dead peer and failed. The all-reduced flag alone must decide, on every rank."""
    root = tmp_path / "proj"
    root.mkdir()
    cfg = write_project(root, write_tiny_dataset(tmp_path / "data"), epochs=3)
    out = tmp_path / "out"
    out.mkdir()
    exp = root / "experiments" / "race"
    cp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                         str(Path(__file__).with_name("ddp_stop_race.py")), str(cfg), str(exp), str(out), "3"],
                        cwd=root, env=cli_env(tmp_path), capture_output=True, text=True, timeout=240,
                        stdin=subprocess.DEVNULL)
    ranks = [read_json(out / f"rank{r}.json") for r in (0, 1)]
    assert [r and r["ended"] for r in ranks] == ["stopped", "stopped"], (ranks, cp.stdout[-1500:], cp.stderr[-3000:])
    assert ranks[0]["step"] == ranks[1]["step"] == "epoch 1, step 4"  # the signal counts at the next step's reduce
    assert read_json(exp / "progress.json")["state"] == "stopped"
    assert read_json(exp / "checkpoints" / "last.json")["step"] == 4
