"""A sweep on a loopback sshd "box": detached under the supervisor, survives the laptop's ssh dying,
stop + resume loses and duplicates no trial, and the best config trains."""

from __future__ import annotations

import json
import re
import sys
import tempfile
from collections import Counter

import pytest
from runs_sshd import kill_ssh_clients, start_sshd, stop_sshd
from runs_support import cli_env, mlc, read_json, wait_for, write_project, write_tiny_dataset
from tests.conftest import require_tool

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]

SPACE = "learning_rate: {float: [1e-3, 1e-2], log: true}\nhidden_dropout_prob: {choice: [0.1, 0.3]}\n"


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    require_tool("sshd", "ssh", "rsync", "ssh-keygen")
    tmp = tmp_path_factory.mktemp("sweep_remote")
    sshd = start_sshd(tmp / "sshd")
    data = write_tiny_dataset(tmp / "hostdata")
    laptop = tmp / "laptop"
    laptop.mkdir()
    write_project(laptop, data, epochs=5)
    (laptop / "space.yaml").write_text(SPACE)
    remote = tmp / "remote_root"
    (laptop / "mlconnect.toml").write_text(
        f'[hosts.{sshd.alias}]\nremote_root = "{remote}"\npython = "{sys.executable}"\n')
    env = cli_env(tmp)
    env["MLCONNECT_CONTROL_DIR"] = tempfile.mkdtemp(prefix="mlc-sweep-", dir="/tmp")
    yield {"sshd": sshd, "laptop": laptop, "remote": remote, "env": env,
           "host": ["--host", sshd.alias, "--ssh-config", str(sshd.ssh_config)]}
    stop_sshd(sshd, env["MLCONNECT_CONTROL_DIR"])


def _status(box, name: str) -> dict:
    return json.loads(mlc(["sweep", "status", name, "--json", *box["host"]], box["laptop"], box["env"]).stdout)


def test_remote_sweep_survives_disconnects_stop_resume_and_best_trains(box):
    laptop, env, host, remote = box["laptop"], box["env"], box["host"], box["remote"]
    out = mlc(["sweep", "start", *host, "--config", "configs/tiny.yaml", "--space", "space.yaml", "--trials", "6",
               "--parallel", "2", "--name", "rs", "--no-prune"], laptop, env).stdout
    assert "sweep rs: running on gpubox" in out and "mlconnect sweep status rs --host gpubox" in out
    assert (remote / "space.yaml").is_file() and (remote / "sweeps" / "rs" / "journal.log").is_file()
    log = remote / "sweeps" / "rs" / "training.log"
    wait_for(lambda: " started on " in log.read_text(), timeout=120, what="a first trial")
    assert kill_ssh_clients(box) >= 1  # the laptop's ssh (the multiplexing master) dies mid-sweep
    # Stop once a trial has finished and two are mid-training (the log is read on the box's disk
    # here only to poll cheaply; every assertion below goes through `sweep status` over ssh).
    def mid_sweep() -> bool:
        text = log.read_text()
        started = set(re.findall(r"trial (\d+) started on", text))
        running = started - set(re.findall(r"trial (\d+) finished", text))
        return len(started) > len(running) and len(running) == 2 and all(
            (remote / "experiments" / f"rs-t{int(n):03d}" / "checkpoints" / "last.json").is_file() for n in running)

    wait_for(mid_sweep, timeout=150, interval=0.2, what="one trial done and two running")
    mlc(["sweep", "stop", "rs", *host], laptop, env)
    stopped = _status(box, "rs")
    assert stopped["state"] == "stopped"
    interrupted = [t for t in stopped["trials"] if t["state"] == "interrupted"]
    assert interrupted and "running" not in stopped["counts"]
    exp_dir = remote / "experiments"
    had_checkpoint = {t["number"] for t in interrupted
                      if (exp_dir / t["experiments"][0] / "checkpoints" / "last.pt").is_file()}
    assert had_checkpoint  # at least the trials seen mid-training
    assert "interrupted (stop)" in log.read_text()
    mlc(["sweep", "resume", "rs", *host], laptop, env)
    kill_ssh_clients(box)
    wait_for(lambda: (read_json(remote / "sweeps" / "rs" / "status.json") or {}).get("state") == "succeeded",
             timeout=240, interval=0.5, what="the resumed sweep to finish")
    final = json.loads(mlc(["sweep", "status", "rs", "--json", "--plot", "plots", *host], laptop, env).stdout)
    assert (laptop / "plots" / "rs-history.png").stat().st_size > 1000  # Optuna's matplotlib plots, brought home
    done = [t for t in final["trials"] if t["state"] == "complete"]
    requeued = [t for t in final["trials"] if t["state"] == "requeued"]
    assert len(done) == 6 and {t["number"] for t in requeued} == {t["number"] for t in interrupted}
    # Every interrupted config ran again exactly once; no other config ran twice.
    key = lambda t: json.dumps(t["params"], sort_keys=True)  # noqa: E731
    runs = Counter(key(t) for t in done)
    assert all(runs[key(t)] == 1 for t in requeued) and sum(runs.values()) == 6
    for t in done:
        res = read_json(remote / "experiments" / t["experiments"][0] / "results" / "metrics.json")
        assert res["epochs"] == 5 and res["best_valid"]["mrr@10"] == pytest.approx(t["value"])
    ps = {r["name"]: r for r in json.loads(mlc(["ps", "--json", *host], laptop, env).stdout)}
    assert all(ps[t["experiments"][0]]["state"] == "succeeded" for t in done)
    for t in requeued:  # its config ran on from the interrupted experiment's checkpoint, not from scratch
        again = next(d for d in done if d["requeued_from"] == t["number"])
        assert again["experiments"] == t["experiments"] == [f"rs-t{t['number']:03d}"]
        resumed = "resuming SASRec" in (exp_dir / t["experiments"][0] / "training.log").read_text()
        assert resumed == (t["number"] in had_checkpoint)
    assert sorted(p.name for p in (remote / "experiments").iterdir()) == sorted(ps)  # 6 folders, one per config
    assert len(ps) == 6 and all(r["state"] == "succeeded" for r in ps.values())
    for t in done:  # every trial is an ordinary experiment, with the sweep's record next to it
        assert read_json(remote / "experiments" / t["experiments"][0] / "sweep.json")["params"] == t["params"]
    assert "2 worker(s)" in log.read_text()
    mlc(["sweep", "best", "rs", "--write", "best.yaml", *host], laptop, env)
    assert "best trial" in (laptop / "best.yaml").read_text()
    mlc(["train", "--config", "best.yaml", "--experiment", "best-local", "--set", "epochs=1"], laptop, env)
    assert read_json(laptop / "experiments" / "best-local" / "results" / "metrics.json")["epochs"] == 1
