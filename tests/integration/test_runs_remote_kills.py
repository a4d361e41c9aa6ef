"""A detached run on a real sshd host whose supervisor is SIGKILLed (the OOM killer's favourite target
is any process; `kill -9` by hand): the trainer goes on and finishes, so ps must say ``succeeded``,
not ``lost``, and ``resume`` must not start it again."""

from __future__ import annotations

import os
import signal
import sys
import tempfile

import pytest
from runs_sshd import start_sshd, stop_sshd
from runs_support import cli_env, mlc, ps_json, read_json, wait_for, write_project, write_tiny_dataset
from tests.conftest import require_tool

pytestmark = pytest.mark.timeout(120)


def test_supervisor_killed_but_trainer_finished_is_succeeded(tmp_path):
    require_tool("sshd", "ssh", "rsync", "ssh-keygen")
    sshd = start_sshd(tmp_path / "sshd")
    laptop, remote = tmp_path / "laptop", tmp_path / "remote_root"
    laptop.mkdir()
    write_project(laptop, write_tiny_dataset(tmp_path / "hostdata"), epochs=6)
    (laptop / "mlconnect.toml").write_text(
        f'[hosts.{sshd.alias}]\nremote_root = "{remote}"\npython = "{sys.executable}"\n')
    env = cli_env(tmp_path)
    env["MLCONNECT_CONTROL_DIR"] = tempfile.mkdtemp(prefix="mlc-kill-", dir="/tmp")  # short socket paths
    host = ["--host", sshd.alias, "--ssh-config", str(sshd.ssh_config)]
    try:
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
    finally:
        stop_sshd(sshd, env["MLCONNECT_CONTROL_DIR"])
