"""`mlconnect doctor` against a real OpenSSH server on 127.0.0.1 (runs_sshd), and against a closed port.

The "host" is this machine through sshd with throwaway keys, running this same venv; it has no GPU
here, so the GPU checks must come out WARN and the doctor still passes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from runs_sshd import start_sshd, stop_sshd
from tests.conftest import require_tool

from support.sshd import free_port

pytestmark = pytest.mark.timeout(180)



@pytest.fixture(scope="module")
def box(tmp_path_factory):
    require_tool("sshd", "ssh", "rsync", "ssh-keygen", "git")
    tmp = tmp_path_factory.mktemp("doctor")
    sshd = start_sshd(tmp / "sshd")
    laptop, remote = tmp / "laptop", tmp / "remote_root"
    laptop.mkdir()
    remote.mkdir()
    closed = free_port()
    (laptop / "mlconnect.toml").write_text(
        f'[hosts.{sshd.alias}]\nremote_root = "{remote}"\npython = "{sys.executable}"\n\n'
        f'[hosts.badport]\nhostname = "127.0.0.1"\nport = {closed}\nidentity_file = "{sshd.key}"\n'
        f'remote_root = "{remote}"\npython = "{sys.executable}"\n')
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=laptop, check=True)
    subprocess.run([*git, "add", "mlconnect.toml"], cwd=laptop, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=laptop, check=True)
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "250", "MLCONNECT_CONFIG": str(tmp / "none.toml"),
           "MLCONNECT_CONTROL_DIR": tempfile.mkdtemp(prefix="mlc-doc-", dir="/tmp")}
    env.pop("MLCONNECT_HOST", None)
    yield {"sshd": sshd, "laptop": laptop, "env": env, "closed": closed,
           "cfg": ["--ssh-config", str(sshd.ssh_config)]}
    stop_sshd(sshd, env["MLCONNECT_CONTROL_DIR"])


def _doctor(box, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    cp = subprocess.run([sys.executable, "-m", "mlconnect", "doctor", *args], capture_output=True, text=True,
                        cwd=box["laptop"], env=box["env"], timeout=170, stdin=subprocess.DEVNULL)
    return cp, time.monotonic() - t0


def _by_name(cp: subprocess.CompletedProcess[str]) -> dict[str, dict]:
    data = json.loads(cp.stdout)
    return {c["name"]: c for c in data["checks"]}


def test_doctor_passes_against_loopback_sshd_with_gpu_as_warn(box):
    import torch

    cp, took = _doctor(box, "--host", box["sshd"].alias, *box["cfg"], "--json")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    checks = _by_name(cp)
    assert json.loads(cp.stdout)["ok"] is True
    assert checks["ssh"]["status"] == "PASS" and f":{box['sshd'].port}" in checks["ssh"]["detail"]
    for name in ("versions", "rsync", "disk", "git", "tensorboard"):
        assert checks[name]["status"] == "PASS", checks[name]
    assert "mlconnect 0" in checks["versions"]["detail"] or "mlconnect" in checks["versions"]["detail"]
    assert "comes from mlconnect sync" in checks["git"]["detail"]  # clean repo here, rsync copy there
    if not torch.cuda.is_available():
        # The loopback box shares this venv: a CPU-only build (CI's torch==2.13.0) or a CUDA build on a
        # machine with no GPU (`make quickstart`'s default torch spec, then `make test`) each get their words.
        said = "CUDA is not available" if torch.version.cuda is None else "build but sees no GPU"
        assert checks["gpu"]["status"] == "WARN" and said in checks["gpu"]["detail"], checks["gpu"]
        assert checks["gpu"]["fix"]
    assert checks["nvidia-smi"]["status"] in ("PASS", "WARN")
    assert checks["ports"]["status"] in ("PASS", "WARN")
    assert all(c["status"] != "FAIL" for c in checks.values())
    assert took < 30, f"doctor took {took:.1f} s"
    print(f"doctor wall time against loopback sshd: {took:.2f} s")  # shown with -s


def test_doctor_wrong_port_fails_with_the_ssh_line(box):
    cp, took = _doctor(box, "--host", "badport", *box["cfg"], "--json")
    assert cp.returncode == 1, cp.stdout + cp.stderr
    checks = _by_name(cp)
    ssh = checks["ssh"]
    assert ssh["status"] == "FAIL"
    assert "Connection refused" in ssh["detail"] and f"port {box['closed']}" in ssh["detail"], ssh
    assert ssh["fix"]
    assert checks["versions"]["status"] == "WARN" and "SSH failed" in checks["versions"]["detail"]
    assert took < 30
    # The table for people shows the same line, and the summary says it failed.
    cp2, _ = _doctor(box, "--host", "badport", *box["cfg"])
    assert cp2.returncode == 1
    assert "FAIL" in cp2.stdout and "Connection refused" in cp2.stdout and "doctor FAILED" in cp2.stdout


def test_doctor_smoke_trains_one_epoch_on_the_host(box):
    cp, _ = _doctor(box, "--host", box["sshd"].alias, *box["cfg"], "--json", "--smoke")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    smoke = _by_name(cp)["smoke"]
    assert smoke["status"] == "PASS" and "best epoch 1 of 1" in smoke["detail"], smoke
    assert not list(Path(tempfile.gettempdir()).glob("mlconnect-doctor-*"))  # cleaned up on the host


# ---- a WSL2 host (fake layout on the ssh side, through the host's env lines) --------------------

@pytest.fixture(scope="module")
def wslbox(box, tmp_path_factory):
    from runs_support import write_project, write_tiny_dataset

    from support.fake_wsl import env_lines, make_fake_wsl

    tmp = tmp_path_factory.mktemp("wslbox")
    fake = make_fake_wsl(tmp / "wsl", wslconfig="[wsl2]\nvmIdleTimeout=-1\n", task="missing",
                         wsl_conf="[boot]\nsystemd=false\n", systemd_running=False)
    laptop, remote = tmp / "laptop", tmp / "remote_root"
    laptop.mkdir()
    write_project(laptop, write_tiny_dataset(tmp / "data"), epochs=1)
    env = "[" + ", ".join(json.dumps(line) for line in env_lines(fake)) + "]"
    (laptop / "mlconnect.toml").write_text(
        f'[hosts.{box["sshd"].alias}]\nremote_root = "{remote}"\npython = "{sys.executable}"\nenv = {env}\n')
    return {"laptop": laptop, "fake": fake, "remote": remote}


def test_doctor_on_a_wsl_host_warns_with_the_fixes(box, wslbox):
    cp = subprocess.run([sys.executable, "-m", "mlconnect", "doctor", "--host", box["sshd"].alias, *box["cfg"],
                         "--json"], capture_output=True, text=True, cwd=wslbox["laptop"], env=box["env"], timeout=170)
    assert cp.returncode == 0, cp.stdout + cp.stderr  # WARNs, no FAIL
    checks = _by_name(cp)
    idle, systemd, task = checks["wsl-idle"], checks["wsl-systemd"], checks["wsl-keepalive"]
    assert idle["status"] == "WARN" and "instanceIdleTimeout not set (15000 ms)" in idle["detail"]
    assert "C:\\Users\\ana\\.wslconfig" in idle["detail"] and "instanceIdleTimeout=-1 under [general]" in idle["fix"]
    assert systemd["status"] == "WARN" and "systemd is off" in systemd["detail"]
    assert task["status"] == "WARN" and "schedule_keepalive.ps1" in task["fix"]
    # Fixed on the Windows side: the same doctor passes those rows.
    cfg = wslbox["fake"] / "root/mnt/c/Users/ana/.wslconfig"
    cfg.write_text("[general]\ninstanceIdleTimeout=-1\n[wsl2]\nvmIdleTimeout=-1\n")
    try:
        cp = subprocess.run([sys.executable, "-m", "mlconnect", "doctor", "--host", box["sshd"].alias, *box["cfg"],
                             "--json"], capture_output=True, text=True, cwd=wslbox["laptop"], env=box["env"],
                            timeout=170)
        assert _by_name(cp)["wsl-idle"]["status"] == "PASS"
    finally:
        cfg.write_text("[wsl2]\nvmIdleTimeout=-1\n")


def test_train_on_a_wsl_host_prints_the_idle_warning_once(box, wslbox):
    from runs_support import mlc

    host = ["--host", box["sshd"].alias, *box["cfg"]]
    cp = mlc(["train", *host, "--config", "configs/tiny.yaml", "--experiment", "w1"], wslbox["laptop"], box["env"])
    lines = [ln for ln in cp.stderr.splitlines() if ln.startswith("warning:")]
    idle = [ln for ln in lines if "instanceIdleTimeout" in ln and "stop ~15 s" in ln]
    assert len(idle) == 1 and "--no-idle-timeout" in idle[0], cp.stderr
    assert sum("keep-alive" in ln for ln in lines) == 1 and len(lines) == 2
    assert "w1: running" in cp.stdout or "w1: succeeded" in cp.stdout
    mlc(["logs", "w1", "-f", *host], wslbox["laptop"], box["env"])  # let the tiny run finish here
    assert (wslbox["remote"] / "experiments/w1/results/metrics.json").is_file()
