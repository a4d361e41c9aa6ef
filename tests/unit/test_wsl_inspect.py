"""mlconnect.wsl against a fake WSL layout (real files, real programs on PATH), and doctor's gpu verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlconnect import wsl
from mlconnect.setup.doctor_gpu import PASS, WARN, gpu_verdict
from support.fake_wsl import env_for, make_fake_wsl

GOOD = "[wsl2]\nmemory=24GB\nvmIdleTimeout=-1\n\n[general]\ninstanceIdleTimeout=-1\n"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    builds, clean = [], dict(os.environ)

    def build(**kw) -> dict[str, dict]:
        builds.append(1)
        base = make_fake_wsl(tmp_path / f"wsl{len(builds)}", **kw)  # a fresh layout each time
        for k, v in env_for(base, clean).items():
            monkeypatch.setenv(k, v)
        return {r["name"]: r for r in wsl.findings(wsl.inspect())}
    return build


def test_not_wsl_means_no_rows_and_no_warnings(tmp_path, monkeypatch):
    (tmp_path / "osrelease").write_text("6.1.0-18-amd64\n")
    monkeypatch.setenv("MLCONNECT_WSL_OSRELEASE", str(tmp_path / "osrelease"))
    assert wsl.inspect() == {"wsl": False}
    assert wsl.findings(wsl.inspect()) == [] and wsl.run_warnings() == []


def test_all_good(fake):
    rows = fake(wslconfig=GOOD)
    assert {n: r["status"] for n, r in rows.items()} == {"wsl-idle": PASS, "wsl-systemd": PASS, "wsl-keepalive": PASS}
    assert "C:\\Users\\ana\\.wslconfig" in rows["wsl-idle"]["detail"]
    assert "running" in rows["wsl-keepalive"]["detail"]
    assert wsl.run_warnings() == []


@pytest.mark.parametrize("text, shown", [
    ("[wsl2]\nvmIdleTimeout=-1\n", "not set (15000 ms)"),  # only the VM key: the old advice
    ("[general]\ninstanceIdleTimeout=60000\n", "=60000"),
    ("[General]\nInstanceIdleTimeout = 0   # comment\n", "=0"),
])
def test_idle_timeout_not_negative_warns_with_the_fix(fake, text, shown):
    rows = fake(wslconfig=text, task="missing")
    idle = rows["wsl-idle"]
    assert idle["status"] == WARN and shown in idle["detail"] and "stop ~15 s" in idle["detail"]
    assert "instanceIdleTimeout=-1 under [general]" in idle["fix"] and "--no-idle-timeout" in idle["fix"]
    warnings = wsl.run_warnings()
    assert len(warnings) == 2 and "instanceIdleTimeout" in warnings[0] and "keep-alive" in warnings[1]


def test_task_running_holds_the_distro_so_no_run_warning(fake):
    rows = fake(wslconfig="[wsl2]\nmemory=8GB\n", task="Running")
    assert rows["wsl-idle"]["status"] == WARN and rows["wsl-keepalive"]["status"] == PASS
    assert wsl.run_warnings() == []


def test_task_missing_and_interop_off(fake):
    rows = fake(wslconfig=GOOD, task="missing")
    assert rows["wsl-keepalive"]["status"] == WARN and "schedule_keepalive.ps1" in rows["wsl-keepalive"]["fix"]
    rows = fake(wslconfig=GOOD, task=None, profile="none")
    assert rows["wsl-keepalive"]["status"] == WARN and "interop off" in rows["wsl-keepalive"]["detail"]
    idle = rows["wsl-idle"]
    assert idle["status"] == WARN and idle["detail"].startswith("cannot read .wslconfig: neither `wslvar")
    assert "check it in Windows" in idle["fix"]


def test_cmd_exe_fallback_and_unreadable_wslconfig(fake, tmp_path):
    rows = fake(wslconfig=GOOD, profile="cmd")
    assert rows["wsl-idle"]["status"] == PASS
    cfg = tmp_path / "wsl1/root/mnt/c/Users/ana/.wslconfig"
    cfg.write_text("[wsl2\nmemory=8GB\n")  # broken header
    rows = {r["name"]: r for r in wsl.findings(wsl.inspect())}
    assert rows["wsl-idle"]["status"] == WARN and rows["wsl-idle"]["detail"].startswith("cannot read C:\\Users")
    cfg.unlink()
    rows = {r["name"]: r for r in wsl.findings(wsl.inspect())}
    assert rows["wsl-idle"]["detail"].startswith("no C:\\Users\\ana\\.wslconfig")


def test_systemd_off_or_not_running(fake):
    rows = fake(wslconfig=GOOD, wsl_conf="[boot]\nsystemd=false\n", systemd_running=False)
    s = rows["wsl-systemd"]
    assert s["status"] == WARN and "systemd is off" in s["detail"] and "setup server" in s["fix"]
    rows = fake(wslconfig=GOOD, wsl_conf=None, systemd_running=False)
    assert rows["wsl-systemd"]["status"] == WARN
    rows = fake(wslconfig=GOOD, systemd_running=False)
    assert "not running" in rows["wsl-systemd"]["detail"] and "wsl --shutdown" in rows["wsl-systemd"]["fix"]


def test_mirrored_asked_but_nat_in_effect(fake):
    rows = fake(wslconfig=GOOD + "[wsl2]\nnetworkingMode=mirrored\n", networking="nat")
    net = rows["wsl-network"]
    assert net["status"] == WARN and "runs nat" in net["detail"] and "22H2" in net["detail"]
    assert "wsl-network" not in fake(wslconfig=GOOD + "[wsl2]\nnetworkingMode=mirrored\n", networking="mirrored")


def test_module_source_runs_as_a_python_c_program(tmp_path):
    """doctor sends the file's source to the host: it must run alone, with no mlconnect installed."""
    base = make_fake_wsl(tmp_path / "wsl", wslconfig=GOOD)
    cp = subprocess.run([sys.executable, "-I", "-c", Path(wsl.__file__).read_text()], capture_output=True,
                        text=True, env=env_for(base), cwd=tmp_path, timeout=30)
    assert cp.returncode == 0, cp.stderr
    info = json.loads(cp.stdout)
    assert info["wsl"] and info["wslconfig"]["instance_idle"] == "-1" and info["task"]["found"]


# ---- doctor's gpu row (issue 10: a CUDA build with no visible GPU is not an install problem) ----

def _gpu(**d) -> tuple[str, str, str]:
    return gpu_verdict({"torch": "2.6.0+cu124", "cuda_build": "12.4", "cuda": False, "gpus": [], **d}, "box")


@pytest.mark.parametrize("env, says", [
    ({"visible": ""}, "CUDA_VISIBLE_DEVICES='' hides every GPU"),
    ({"visible": "-1"}, "CUDA_VISIBLE_DEVICES='-1' hides every GPU"),
    ({"wsl": True, "wsl_lib": False}, "/usr/lib/wsl/lib is missing"),
    ({"visible": "0", "wsl": False}, "check `nvidia-smi` there (driver loaded?) and CUDA_VISIBLE_DEVICES (now '0')"),
])
def test_cuda_build_without_visible_gpu_says_visibility_not_reinstall(env, says):
    status, detail, fix = _gpu(**env)
    assert status == WARN and "is a CUDA 12.4 build but sees no GPU" in detail
    assert says in fix and "torch itself is fine" in fix
    assert "install a CUDA build" not in fix and "pip install" not in fix


def test_cpu_build_still_recommends_a_cuda_build_and_a_gpu_passes():
    status, detail, fix = _gpu(cuda_build=None, torch="2.13.0+cpu")
    assert status == WARN and "CPU-only" in detail and "install a CUDA build" in fix
    status, detail, _ = _gpu(cuda=True, gpus=[["NVIDIA H200", 141 * 2**30]])
    assert status == PASS and "NVIDIA H200 141.0 GiB" in detail
