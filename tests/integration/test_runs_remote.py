"""Runs over a real OpenSSH server on 127.0.0.1: sync, detached train, ps, logs -f, pull, stop/resume.

The "host" is this machine reached through sshd with throwaway keys; it runs the same venv, with
``remote_root`` a temp folder. Disconnects are real: the client's ssh processes (the multiplexing
master included) are SIGKILLed mid-run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from runs_sshd import kill_ssh_clients, start_sshd, stop_sshd
from runs_support import cli_env, mlc, ps_json, read_json, wait_for, write_project, write_tiny_dataset
from tests.conftest import require_tool

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    require_tool("sshd", "ssh", "rsync", "ssh-keygen")
    tmp = tmp_path_factory.mktemp("runs_remote")
    sshd = start_sshd(tmp / "sshd")
    data = write_tiny_dataset(tmp / "hostdata")
    laptop = tmp / "laptop"
    laptop.mkdir()
    write_project(laptop, data)
    remote = tmp / "remote_root"
    (laptop / "mlconnect.toml").write_text(
        f'[hosts.{sshd.alias}]\nremote_root = "{remote}"\npython = "{sys.executable}"\n')
    env = cli_env(tmp)
    # A short path of our own: unix socket paths are limited to ~104 bytes.
    env["MLCONNECT_CONTROL_DIR"] = tempfile.mkdtemp(prefix="mlc-runs-", dir="/tmp")
    host = ["--host", sshd.alias, "--ssh-config", str(sshd.ssh_config)]
    yield {"sshd": sshd, "laptop": laptop, "remote": remote, "env": env, "host": host}
    stop_sshd(sshd, env["MLCONNECT_CONTROL_DIR"])


def _remote_state(box, name: str) -> str:
    return ps_json(box["laptop"], box["env"], box["host"])[name]["state"]


def test_full_cycle_sync_train_ps_logs_pull(box):
    laptop, env, host = box["laptop"], box["env"], box["host"]
    t0 = time.monotonic()
    out = mlc(["train", *host, "--config", "configs/tiny.yaml", "--experiment", "r1"], laptop, env).stdout
    took = time.monotonic() - t0
    assert "r1: running on gpubox" in out and "mlconnect logs r1 -f --host gpubox" in out, out
    assert took < 20
    assert (box["remote"] / "configs" / "tiny.yaml").is_file()  # synced
    rows = ps_json(laptop, env, host)
    assert rows["r1"]["state"] in ("running", "succeeded")
    follow = mlc(["logs", "r1", "-f", *host], laptop, env).stdout
    remote_exp = box["remote"] / "experiments" / "r1"
    assert follow == (remote_exp / "training.log").read_text()
    assert "exited with code 0: succeeded" in follow
    assert not (laptop / "experiments").exists()  # nothing local until pull
    mlc(["pull", "r1", *host], laptop, env)
    local = laptop / "experiments" / "r1"
    metrics = read_json(local / "results" / "metrics.json")
    assert metrics["experiment"] == "r1" and metrics["test"]["ndcg@10"] >= 0
    for f in ("config.yaml", "training.log", "gpu_usage.csv", "progress.json", "status.json", "meta.json"):
        assert (local / f).is_file(), f
    assert "no GPU" in (local / "gpu_usage.csv").read_text()  # a state, recorded once
    assert list((local / "logs").iterdir())  # TensorBoard events
    assert (local / "checkpoints" / "best.pt").is_file() and not (local / "checkpoints" / "last.pt").exists()
    mlc(["pull", "r1", "--checkpoints", "all", *host], laptop, env)
    assert (local / "checkpoints" / "last.pt").is_file()
    # The local ps now reads the pulled copy.
    assert ps_json(laptop, env)["r1"]["state"] == "succeeded"
    out = mlc(["exp", "create", "r0", "--config", "configs/tiny.yaml", *host], laptop, env).stdout
    assert "created r0" in out and "--host gpubox" in out
    assert "hidden_size: 16" in (box["remote"] / "experiments" / "r0" / "config.yaml").read_text()
    assert ps_json(laptop, env, host)["r0"]["state"] == "created"
    status = json.loads(mlc(["status", "--json", *host], laptop, env).stdout)
    assert status["root"] == str(box["remote"]) and status["gpu"]["available"] is False


def test_killing_the_clients_ssh_does_not_stop_the_run(box):
    laptop, env, host = box["laptop"], box["env"], box["host"]
    mlc(["train", *host, "--config", "configs/tiny.yaml", "--experiment", "r2", "--set", "epochs=20",
         "--set", "stopping_step=100"], laptop, env)
    assert kill_ssh_clients(box) >= 1  # the multiplexing master, at least
    st = read_json(box["remote"] / "experiments" / "r2" / "status.json")
    assert st["state"] == "running"
    # The run was described once (run_spec.json) and the supervisor started the engine's entry point on
    # it, not `mlconnect train` again: the training process's argv on the host says so.
    spec = box["remote"] / "experiments" / "r2" / "run_spec.json"
    assert read_json(spec)["overrides"] == ["epochs=20", "stopping_step=100"]
    argv = Path(f"/proc/{st['pid']}/cmdline").read_bytes().decode().split("\0")[:-1]
    assert argv[argv.index("-m") + 1:] == ["mlconnect.engine.run", str(spec)], argv
    assert "train" not in argv and st["command"] == argv
    # Reconnects on its own (a new master) and sees the run through to the end.
    wait_for(lambda: _remote_state(box, "r2") == "succeeded", timeout=150, interval=2,
             what="the run to finish after the disconnect")
    assert read_json(box["remote"] / "experiments" / "r2" / "results" / "metrics.json")["epochs"] == 20


def test_logs_follow_survives_forced_disconnects(box):
    laptop, env, host = box["laptop"], box["env"], box["host"]
    mlc(["train", *host, "--config", "configs/tiny.yaml", "--experiment", "r3", "--set", "epochs=25",
         "--set", "stopping_step=100"], laptop, env)
    follower = subprocess.Popen([sys.executable, "-m", "mlconnect", "logs", "r3", "-f", *host], cwd=laptop,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = box["remote"] / "experiments" / "r3" / "training.log"
    killed = 0
    for target_epoch in (3, 10):
        wait_for(lambda e=target_epoch: f"epoch {e}/25" in (log.read_text() if log.exists() else ""),
                 timeout=120, what=f"epoch {target_epoch}")
        killed += kill_ssh_clients(box)  # mid long-poll: the in-flight read dies with its ssh
    out, err = follower.communicate(timeout=200)
    assert follower.returncode == 0, err
    assert killed >= 2
    assert f"lost the connection to {host[1]}" in err and "reconnected" in err
    assert out == log.read_text()  # every line, exactly once
    assert out.count("epoch 25/25") == 1 and "exited with code 0: succeeded" in out


def test_stop_and_resume_over_ssh_and_reused_pid(box):
    laptop, env, host = box["laptop"], box["env"], box["host"]
    mlc(["train", *host, "--config", "configs/tiny.yaml", "--experiment", "r4", "--set", "epochs=25",
         "--set", "stopping_step=100"], laptop, env)
    exp = box["remote"] / "experiments" / "r4"
    wait_for(lambda: (read_json(exp / "checkpoints" / "last.json") or {}).get("epoch", 0) >= 2,
             what="a checkpoint")
    st = json.loads(mlc(["stop", "r4", "--json", *host], laptop, env).stdout)
    assert st["state"] == "stopped" and st["exit_code"] == 143
    assert (exp / "checkpoints" / "last.pt").is_file()
    # The trainer's advice in the host's training.log is the laptop's command (issue 10).
    assert f"continue with `mlconnect resume r4 --host {host[1]}`" in (exp / "training.log").read_text()
    at = read_json(exp / "checkpoints" / "last.json")["epoch"]
    out = mlc(["resume", "r4", *host], laptop, env).stdout
    assert "r4: running" in out
    wait_for(lambda: _remote_state(box, "r4") == "succeeded", timeout=150, interval=2, what="resume to end")
    log = (exp / "training.log").read_text()
    assert f"epoch {at + 1}/25" in log.split("resuming SASRec", 1)[1].splitlines()[1]
    # A status.json whose pid is alive but is not the run (a reused pid) is never "running".
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fake = box["remote"] / "experiments" / "ghost"
        fake.mkdir(parents=True)
        (fake / "status.json").write_text(json.dumps({
            "run_id": "0123456789abcdef0123456789abcdef", "pid": other.pid, "pgid": other.pid,
            "supervisor_pid": other.pid, "state": "running", "boot_id": Path(
                "/proc/sys/kernel/random/boot_id").read_text().strip(), "started": "2026-11-28T10:00:00+00:00"}))
        assert _remote_state(box, "ghost") == "lost"
        cp = mlc(["stop", "ghost", *host], laptop, env, check=False)
        assert cp.returncode == 1 and "not running (state: lost)" in cp.stderr
        assert other.poll() is None  # never signalled
    finally:
        other.kill()
        other.wait()
    cp = mlc(["logs", "nope", *host], laptop, env, check=False)
    assert cp.returncode == 1 and cp.stderr.startswith("error: unknown experiment 'nope'") and "gpubox" in cp.stderr


def test_host_without_mlconnect_gets_one_line(box, tmp_path):
    # Same box, but the host's python is the system one, which has no mlconnect.
    bare = tmp_path / "bare"
    bare.mkdir()
    box["remote"].mkdir(exist_ok=True)  # the project is there; only mlconnect is missing
    (bare / "mlconnect.toml").write_text(
        f'[hosts.{box["sshd"].alias}]\nremote_root = "{box["remote"]}"\npython = "/usr/bin/python3"\n')
    need = subprocess.run(["/usr/bin/python3", "-c", "import mlconnect"], capture_output=True)
    if need.returncode == 0:
        pytest.skip("the system python has mlconnect installed")
    for args in (["ps"], ["status"], ["logs", "r1"]):
        cp = mlc([*args, *box["host"]], bare, box["env"], check=False)
        lines = cp.stderr.strip().splitlines()
        assert cp.returncode == 1 and len(lines) == 1, cp.stderr
        assert "mlconnect is not installed" in lines[0] and "mlconnect bootstrap" in lines[0]
    cp = mlc(["logs", "r1", "-f", *box["host"]], bare, box["env"], check=False, timeout=30)
    assert cp.returncode == 1 and "mlconnect is not installed" in cp.stderr  # -f fails fast too
