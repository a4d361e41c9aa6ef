"""Remote runs a demanding user breaks, over a real sshd on 127.0.0.1.

A supervisor SIGKILLed (the OOM killer, `kill -9`) while its trainer goes on and finishes: ps says
``succeeded``, not ``lost``, and ``resume`` does not start it again. Both killed: ``logs -f`` says
the run was lost. A pull while a run still goes says it is a snapshot; a pull never overwrites
another run of the same name here; one damaged record does not break `ps`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile

import pytest
from runs_sshd import start_sshd, stop_sshd
from runs_support import cli_env, mlc, ps_json, read_json, wait_for, write_project, write_tiny_dataset
from tests.conftest import require_tool

from mlconnect.expstate import now_iso

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def box(tmp_path):
    """(sshd, laptop project, remote_root, env, --host args); the sshd stops after the test."""
    require_tool("sshd", "ssh", "rsync", "ssh-keygen")
    sshd = start_sshd(tmp_path / "sshd")
    laptop, remote = tmp_path / "laptop", tmp_path / "remote_root"
    laptop.mkdir()
    write_project(laptop, write_tiny_dataset(tmp_path / "hostdata"), epochs=6)
    (laptop / "mlconnect.toml").write_text(
        f'[hosts.{sshd.alias}]\nremote_root = "{remote}"\npython = "{sys.executable}"\n')
    env = cli_env(tmp_path)
    env["MLCONNECT_CONTROL_DIR"] = tempfile.mkdtemp(prefix="mlc-kill-", dir="/tmp")  # short socket paths
    yield sshd, laptop, remote, env, ["--host", sshd.alias, "--ssh-config", str(sshd.ssh_config)]
    stop_sshd(sshd, env["MLCONNECT_CONTROL_DIR"])


def test_pull_of_a_queued_run_says_it_is_a_snapshot(box):
    sshd, laptop, remote, env, host = box
    mlc(["sync", *host], laptop, env)
    # A run waiting in the host's queue (just created: no supervisor pid to check yet).
    exp = remote / "experiments" / "q1"
    exp.mkdir(parents=True)
    (exp / "status.json").write_text(json.dumps({"run_id": "abc", "state": "queued", "created": now_iso(),
                                                 "host": socket.gethostname(), "queue": True}))
    out = mlc(["pull", "q1", *host], laptop, env).stdout
    assert f"q1 is still queued on {sshd.alias}: this is a snapshot; pull again" in out, out


def test_supervisor_killed_but_trainer_finished_is_succeeded(box):
    sshd, laptop, remote, env, host = box
    mlc(["train", *host, "--config", "configs/tiny.yaml", "--experiment", "k1"], laptop, env)
    status = remote / "experiments" / "k1" / "status.json"
    st = wait_for(lambda: (s := read_json(status)) and s.get("supervisor_pid") and s.get("pid") and s,
                  timeout=30, what="the supervisor's pid")
    os.kill(st["supervisor_pid"], signal.SIGKILL)
    wait_for(lambda: ps_json(laptop, env, host)["k1"]["state"] != "running", timeout=60,
             interval=0.5, what="the trainer to end")
    assert read_json(remote / "experiments" / "k1" / "results" / "metrics.json")["test"]
    assert ps_json(laptop, env, host)["k1"]["state"] == "succeeded"
    assert read_json(status)["supervisor_lost"]
    cp = mlc(["resume", "k1", *host], laptop, env, check=False)
    assert cp.returncode != 0 and "only stopped, lost or failed runs resume" in cp.stderr, cp.stderr
    assert f"--force --host {sshd.alias}`" in cp.stderr  # the hint works as typed on the laptop


def test_logs_follow_of_a_lost_run_says_so(box):
    # Supervisor and trainer both SIGKILLed: nobody writes the log's last line, so `logs -f` used to
    # end quietly as if all was well.
    sshd, laptop, remote, env, host = box
    mlc(["sync", *host], laptop, env)
    dead = subprocess.Popen(["true"])
    dead.wait()
    exp = remote / "experiments" / "l1"
    exp.mkdir(parents=True)
    (exp / "training.log").write_text("epoch 1/9\n")
    (exp / "status.json").write_text(json.dumps({
        "run_id": "abc", "state": "running", "created": "2026-01-01T00:00:00+00:00", "pid": dead.pid,
        "supervisor_pid": dead.pid, "host": socket.gethostname()}))
    cp = mlc(["logs", "l1", "-f", *host], laptop, env, timeout=30)
    assert cp.stdout == "epoch 1/9\n"
    assert "l1 was lost" in cp.stderr and f"`mlconnect resume l1 --host {sshd.alias}`" in cp.stderr, cp.stderr


def test_pull_never_overwrites_another_run_of_the_same_name(box):
    sshd, laptop, remote, env, host = box
    mlc(["sync", *host], laptop, env)
    for name in ("same", "twice"):
        exp = remote / "experiments" / name
        exp.mkdir(parents=True)
        (exp / "training.log").write_text("remote run\n")
        (exp / "status.json").write_text(json.dumps({"run_id": "r", "state": "succeeded", "host": "gpubox"}))
    mine = laptop / "experiments" / "same"
    mine.mkdir(parents=True)
    (mine / "training.log").write_text("trained here\n")  # a foreground run here: no status.json
    cp = mlc(["pull", "same", *host], laptop, env, check=False)
    assert cp.returncode == 1 and "experiments/same here holds another run (trained here)" in cp.stderr
    assert (mine / "training.log").read_text() == "trained here\n"
    for _ in range(2):  # a pulled copy is refreshed by the next pull
        mlc(["pull", "twice", *host], laptop, env)
    assert (laptop / "experiments" / "twice" / "training.log").read_text() == "remote run\n"


def test_one_damaged_record_does_not_break_ps_for_the_host(box):
    # A hand-edited or cut status.json used to crash the host agent: `ps` failed for every run there.
    sshd, laptop, remote, env, host = box
    mlc(["sync", *host], laptop, env)
    exps = remote / "experiments"
    for name, text in (("cut", '{"state": "runn'), ("list", "[1, 2]"), ("good", '{"state": "succeeded"}')):
        (exps / name).mkdir(parents=True)
        (exps / name / "status.json").write_text(text)
    (exps / "list" / "progress.json").write_bytes(b"\x00\xff")
    rows = ps_json(laptop, env, host)
    assert rows["good"]["state"] == "succeeded" and {"cut", "list"} <= set(rows)
    cp = mlc(["stop", "list", *host], laptop, env, check=False)
    assert cp.returncode == 1 and "Error:" not in cp.stderr and "has no run" in cp.stderr, cp.stderr
