"""Runs layer, small pieces: argv building, GPU parsing/sampling, pid checks, reconcile, log reads.

Real processes and real files throughout; the only stand-in is a fake ``nvidia-smi`` script
(this machine has no GPU), which is still a real executable the sampler runs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlconnect import expstate
from mlconnect.fileio import atomic_write_json, read_json
from mlconnect.layout import ExperimentPaths
from mlconnect.runs import gpu, launcher, store
from mlconnect.runs.agent import logs_read

FAKE_SMI = """#!/bin/sh
# Stands in for nvidia-smi: checks it was asked the query we expect, then answers like a 2-GPU box.
case "$1" in --query-gpu=index,name,utilization.gpu,*) ;; *) echo "bad args: $*" >&2; exit 9;; esac
echo "0, NVIDIA GeForce RTX 3090, 37, 12, 1024, 24576, 55, 120.50"
echo "1, NVIDIA GeForce RTX 3090, 63, [N/A], 2048, 24576, 61, [Not Supported]"
"""


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    d = tmp_path / "bin"
    d.mkdir()
    exe = d / "nvidia-smi"
    exe.write_text(FAKE_SMI)
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ['PATH']}")
    return exe


@pytest.fixture
def no_smi(tmp_path, monkeypatch):
    if Path(gpu.WSL_LIB, "nvidia-smi").exists():
        pytest.skip("this machine has a WSL nvidia-smi")
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + "/usr/bin:/bin")
    if gpu.nvidia_smi_path():
        pytest.skip("this machine has nvidia-smi")


def test_train_argv_is_the_engine_entry_point_on_the_spec_with_the_marker():
    argv = launcher.train_argv("/p/experiments/exp_1/run_spec.json", run_id="abc123", python="/venv/bin/python")
    assert argv == ["/venv/bin/python", "-X", "mlconnect-run=abc123", "-m", "mlconnect.engine.run",
                    "/p/experiments/exp_1/run_spec.json"]
    assert "train" not in argv  # the supervisor never re-enters the CLI


def test_marker_is_harmless_to_python():
    # The trick the run-id relies on: CPython accepts and ignores an unknown -X option.
    out = subprocess.run([sys.executable, "-X", "mlconnect-run=r1", "-c", "import sys; print(sys.argv)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['-c']"


def test_parse_query_output_handles_missing_fields():
    s = gpu.parse_query_output("0, RTX A, 5, 1, 10, 100, 40, [N/A]\n1, RTX B, [N/A], 2, 3, 4, 5, 6\n")
    assert [x.name for x in s] == ["RTX A", "RTX B"]
    assert s[0].power_w is None and s[1].utilization_gpu_pct is None and s[1].power_w == 6.0
    with pytest.raises(gpu.GpuUnavailable):
        gpu.parse_query_output("0, only, three\n")


def test_sampler_with_nvidia_smi_writes_csv(fake_smi, tmp_path):
    csv_path = tmp_path / "gpu_usage.csv"
    sampler = gpu.GpuSampler(csv_path, interval_s=0.0)
    assert gpu.nvidia_smi_path() == str(fake_smi)
    sampler.sample()
    sampler.sample()
    lines = csv_path.read_text().splitlines()
    assert lines[0] == ",".join(gpu.CSV_COLUMNS)
    assert len(lines) == 1 + 4
    assert ",NVIDIA GeForce RTX 3090,37,12,1024,24576,55,120.5" in lines[1]
    assert lines[2].endswith(",63,,2048,24576,61,")
    assert gpu.last_utilization(csv_path) == pytest.approx(50.0)
    summary = gpu.gpu_summary()
    assert summary["available"] and summary["gpus"][1]["temperature_c"] == 61


def test_no_gpu_is_recorded_once(no_smi, tmp_path):
    csv_path = tmp_path / "gpu_usage.csv"
    sampler = gpu.GpuSampler(csv_path, interval_s=0.0)
    assert sampler.due()
    assert sampler.sample() == []
    assert not sampler.due()  # it does not try again every few seconds
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 2 and "no GPU: nvidia-smi not found" in lines[1]
    assert gpu.last_utilization(csv_path) is None
    assert gpu.gpu_summary() == {"available": False, "gpus": [],
                                 "reason": "nvidia-smi not found (looked on PATH and in /usr/lib/wsl/lib)"}


def test_failing_nvidia_smi_is_no_gpu(tmp_path, monkeypatch):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed: no driver' >&2\nexit 9\n")
    (d / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ['PATH']}")
    s = gpu.gpu_summary()
    assert not s["available"] and "exit 9" in s["reason"] and "no driver" in s["reason"]


@pytest.fixture
def unrelated_process():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    p.kill()
    p.wait()


def test_process_matches_checks_the_command_line(unrelated_process):
    pid = unrelated_process.pid
    deadline = time.monotonic() + 5  # /proc/<pid>/cmdline can read empty for a moment after exec
    while not expstate.process_cmdline(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert expstate.process_cmdline(pid) and "time.sleep(60)" in expstate.process_cmdline(pid)
    assert launcher.process_matches(pid, "time.sleep")  # substring of its real cmdline
    assert not launcher.process_matches(pid, "0123456789abcdef")  # alive, but not our run
    assert not launcher.process_matches(None, "x")


def _fake_status(paths: ExperimentPaths, **kw) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    st = {"run_id": "feedfacecafe", "pid": None, "pgid": None, "supervisor_pid": None,
          "state": "running", "boot_id": launcher.boot_id(), "started": launcher.now_iso(),
          "host": socket.gethostname()}
    st.update(kw)
    atomic_write_json(paths.status, st)


def test_reused_pid_reads_as_lost(tmp_path, unrelated_process):
    paths = ExperimentPaths(tmp_path / "experiments" / "exp_reused")
    pid = unrelated_process.pid
    _fake_status(paths, pid=pid, pgid=pid, supervisor_pid=pid)
    st = launcher.reconcile(paths)
    assert st["state"] == "lost" and "gone" in st["lost_reason"]
    assert read_json(paths.status)["state"] == "lost"  # recorded, not just displayed
    assert unrelated_process.poll() is None  # and nothing was signalled
    row = store.experiment_row(paths)
    assert row["state"] == "lost" and row["pid"] is None


def test_other_boot_reads_as_lost(tmp_path):
    paths = ExperimentPaths(tmp_path / "experiments" / "exp_boot")
    # Our own pid *and* our run id on the command line: alive, but recorded on another boot.
    _fake_status(paths, pid=os.getpid(), run_id="pytest", boot_id="another-boot")
    assert launcher.reconcile(paths)["state"] == "lost"


def test_stop_refuses_a_run_that_is_not_running(tmp_path):
    from mlconnect.errors import ExperimentError

    paths = ExperimentPaths(tmp_path / "experiments" / "done")
    _fake_status(paths, state="succeeded", exit_code=0)
    with pytest.raises(ExperimentError, match="not running"):
        launcher.stop_run(paths)


def test_logs_read_returns_whole_lines_while_live(tmp_path):
    paths = ExperimentPaths(tmp_path / "experiments" / "live")
    _fake_status(paths, pid=os.getpid(), run_id="pytest")  # "running": our own process matches
    paths.log.write_bytes(b"one\ntwo\nthr")
    r = logs_read(paths, 0)
    assert r["data"] == "one\ntwo\n" and r["offset"] == 8 and not r["done"]
    r2 = logs_read(paths, r["offset"], wait_s=0.3)  # long-poll ends with nothing new
    assert r2["data"] == "" and r2["offset"] == 8
    with open(paths.log, "ab") as f:
        f.write("ee é\n".encode())
    r3 = logs_read(paths, 8)
    assert r3["data"] == "three é\n"
    _fake_status(paths, state="succeeded")
    with open(paths.log, "ab") as f:
        f.write(b"tail without newline")
    r4 = logs_read(paths, r3["offset"])
    assert r4["data"] == "tail without newline" and r4["done"]
    r5 = logs_read(paths, 10_000)  # log replaced by a shorter one
    assert r5["truncated"] and r5["offset"] == r5["size"]


def test_logs_read_long_poll_wakes_on_new_output(tmp_path):
    paths = ExperimentPaths(tmp_path / "experiments" / "poll")
    _fake_status(paths, pid=os.getpid(), run_id="pytest")
    paths.log.write_bytes(b"")
    code = f"import time; time.sleep(0.5); open({str(paths.log)!r}, 'ab').write(b'hi\\n')"
    writer = subprocess.Popen([sys.executable, "-c", code])
    t0 = time.monotonic()
    r = logs_read(paths, 0, wait_s=10)
    writer.wait()
    assert r["data"] == "hi\n" and time.monotonic() - t0 < 9


def test_ps_rows_format():
    from mlconnect.runs.client import ps_table_rows

    rows = ps_table_rows([{"name": "a", "state": "running", "epoch": 3, "epochs": 50,
                           "best_metric": "ndcg@10", "best_value": 0.0512, "gpu_util": 37.4,
                           "age_s": 3700},
                          {"name": "b", "state": "created", "epoch": None, "best_value": None,
                           "gpu_util": None, "age_s": 5}])
    assert rows[0] == {"name": "a", "state": "running", "epoch": "3/50", "best": "ndcg@10 0.0512",
                       "gpu": "37%", "age": "1h"}
    assert rows[1]["epoch"] == "-" and rows[1]["age"] == "5s"
    ddp = ps_table_rows([{"name": "c", "state": "running", "gpu_util": 80.0, "gpu_index": 1, "world_size": 2,
                          "age_s": 1}])
    assert ddp[0]["gpu"] == "#1 80% x2"  # the GPU the run holds, its load, its DDP world size


def test_pulled_status_from_another_host_is_left_alone(tmp_path):
    paths = ExperimentPaths(tmp_path / "experiments" / "pulled")
    _fake_status(paths, pid=999999, host="gpu-box-elsewhere", boot_id="their-boot")
    assert launcher.reconcile(paths)["state"] == "running"
    assert read_json(paths.status)["state"] == "running"  # never rewritten on the laptop


def test_pull_argv_filters_checkpoints(tmp_path):
    from mlconnect.remote.ssh import Target
    from mlconnect.runs.client import pull_argv

    t = Target(name="gpubox", is_local=False, remote_root="~/proj", python="python3",
               ssh_config=str(tmp_path / "cfg"))
    best = pull_argv(t, "exp_1", tmp_path / "experiments" / "exp_1", "best")
    assert best[0] == "rsync" and best[-2] == "gpubox:proj/experiments/exp_1/"
    assert best[-1] == f"{tmp_path}/experiments/exp_1/"
    # best.pt and every non-model file serving needs; the other model checkpoints stay on the host
    assert best.index("--include=/checkpoints/best.pt") < best.index("--exclude=/checkpoints/*.pt")
    assert "--delete" not in " ".join(best)  # pull never deletes local files
    rsh = best[best.index("-e") + 1]
    assert rsh.startswith("ssh -F ") and "ControlMaster=auto" in rsh
    assert "--exclude=/checkpoints/" in pull_argv(t, "exp_1", tmp_path, "none")
    assert not any("checkpoints" in a for a in pull_argv(t, "exp_1", tmp_path, "all"))
