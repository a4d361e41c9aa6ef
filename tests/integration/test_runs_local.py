"""Detached runs on this machine (no host): the same agent code the host runs, tiny real trainings.

Every command is the real CLI in a real process; runs are real detached trainings of SASRec on a
50-user dataset, stopped with real signals.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from runs_support import FAKE_SMI, cli_env, mlc, ps_json, read_json, tiny_project, wait_for

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def project(tmp_path):
    root = tiny_project(tmp_path)
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text(FAKE_SMI)
    (fake / "nvidia-smi").chmod(0o755)
    return root, cli_env(tmp_path, extra_path=str(fake))


def test_detached_cycle_ps_logs_follow_and_gpu(project):
    root, env = project
    t0 = time.monotonic()
    out = mlc(["train", "--detach", "--config", "configs/tiny.yaml", "--experiment", "e1"], root, env).stdout
    assert time.monotonic() - t0 < 15
    assert "e1: running" in out and "mlconnect logs e1 -f" in out and "mlconnect ps" in out
    row = ps_json(root, env)["e1"]
    assert row["state"] in ("running", "succeeded")
    # Follow to the end: what -f printed is byte for byte the log file.
    follow = mlc(["logs", "e1", "-f"], root, env)
    exp = root / "experiments" / "e1"
    assert follow.stdout == (exp / "training.log").read_text()
    assert "epoch 2/2" in follow.stdout and follow.stdout.rstrip().endswith("exited with code 0: succeeded")
    st = read_json(exp / "status.json")
    assert st["state"] == "succeeded" and st["exit_code"] == 0 and st["ended"] and st["boot_id"]
    assert f"mlconnect-run={st['run_id']}" in " ".join(st["command"])
    assert read_json(exp / "results" / "metrics.json")["test"]
    # The fake nvidia-smi on PATH was sampled by the supervisor (a real process reading real output).
    rows = (exp / "gpu_usage.csv").read_text().splitlines()
    assert rows[0].startswith("timestamp,gpu,name,utilization_gpu_pct") and "RTX 3090,37," in rows[1]
    row = ps_json(root, env)["e1"]
    assert row["state"] == "succeeded" and row["epoch"] == 2 and row["best_metric"] == "mrr@10"
    table = mlc(["ps"], root, env).stdout
    assert "e1" in table and "succeeded" in table and "2/2" in table
    # Without -f, logs prints what is there and returns.
    assert mlc(["logs", "e1"], root, env).stdout == follow.stdout


def test_stop_saves_checkpoint_and_resume_continues(project):
    root, env = project
    exp = root / "experiments" / "long"
    mlc(["train", "--detach", "--config", "configs/tiny.yaml", "--experiment", "long",
         "--set", "epochs=30", "--set", "stopping_step=100"], root, env)
    wait_for(lambda: (read_json(exp / "checkpoints" / "last.json") or {}).get("epoch", 0) >= 1,
             what="a first checkpoint")
    row = ps_json(root, env)["long"]
    assert row["state"] == "running" and row["gpu_util"] == 37.0 and row["pid"]
    out = mlc(["stop", "long", "--json"], root, env).stdout
    st = json.loads(out)
    assert st["state"] == "stopped" and st["exit_code"] == 143  # the trainer's own SIGTERM exit
    assert (exp / "checkpoints" / "last.pt").is_file()
    assert read_json(exp / "progress.json")["state"] == "stopped"
    stopped_at = read_json(exp / "checkpoints" / "last.json")["epoch"]
    assert 1 <= stopped_at < 30
    again = mlc(["stop", "long"], root, env, check=False)
    assert again.returncode == 1 and "not running (state: stopped)" in again.stderr
    mlc(["resume", "long"], root, env)
    final = wait_for(lambda: (r := ps_json(root, env)["long"])["state"] not in ("running", "queued") and r,
                     timeout=180, what="the resumed run to end")
    assert final["state"] == "succeeded" and final["epoch"] == 30
    log = (exp / "training.log").read_text()
    assert "resuming SASRec" in log
    after = log.split("resuming SASRec", 1)[1]
    first_epoch = next(line for line in after.splitlines() if " epoch " in line and "/30" in line)
    assert f"epoch {stopped_at + 1}/30" in first_epoch  # continued, not restarted
    assert read_json(exp / "results" / "metrics.json")["epochs"] == 30


def test_bad_input_gets_one_line(project):
    root, env = project
    for args, msg in ((["logs", "nope"], "unknown experiment 'nope'"),
                      (["stop", "nope"], "unknown experiment 'nope'"),
                      (["resume", "nope"], "unknown experiment 'nope'"),
                      (["train", "--detach", "--config", "configs/missing.yaml", "--experiment", "x"],
                       "config file configs/missing.yaml not found")):
        cp = mlc(args, root, env, check=False)
        assert cp.returncode == 1, (args, cp.stdout, cp.stderr)
        lines = cp.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0] and " — " in lines[0]
    mlc(["train", "--detach", "--config", "configs/tiny.yaml", "--experiment", "dup",
         "--set", "epochs=30", "--set", "stopping_step=100"], root, env)
    cp = mlc(["train", "--detach", "--config", "configs/tiny.yaml", "--experiment", "dup"], root, env,
             check=False)
    assert cp.returncode == 1 and "already running" in cp.stderr
    cp = mlc(["resume", "dup"], root, env, check=False)
    assert cp.returncode == 1 and "already running" in cp.stderr
    mlc(["stop", "dup", "--grace", "20"], root, env)
    cp = mlc(["train", "--detach", "--config", "configs/tiny.yaml", "--experiment", "dup"], root, env,
             check=False)
    assert cp.returncode == 1 and "already has a run" in cp.stderr and "--force" in cp.stderr
    dup = root / "experiments" / "dup"  # the refusal deleted nothing
    assert read_json(dup / "status.json")["state"] == "stopped" and (dup / "training.log").stat().st_size > 0


def test_a_detached_run_that_cannot_start_says_why_in_one_line(project):
    # The engine's entry point, not the CLI, reads the run's spec: its refusal is still one line.
    root, env = project
    mlc(["train", "--detach", "--config", "configs/tiny.yaml", "--experiment", "bad", "--set", "epochs=many"],
        root, env)
    exp = root / "experiments" / "bad"
    wait_for(lambda: (read_json(exp / "status.json") or {}).get("state") == "failed", timeout=60,
             what="the run to fail")
    log = (exp / "training.log").read_text()
    errors = [ln for ln in log.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "epochs" in errors[0] and " — " in errors[0] and "Traceback" not in log, log
    assert "(mlconnect train --experiment bad --config configs/tiny.yaml --set epochs=many)" in log


def test_exp_create_then_train_it(project):
    root, env = project
    out = mlc(["exp", "create", "made", "--config", "configs/tiny.yaml"], root, env).stdout
    cfg = root / "experiments" / "made" / "config.yaml"
    assert "created made" in out and cfg.is_file()
    assert "hidden_size: 16" in cfg.read_text() and "MAX_ITEM_LIST_LENGTH" in cfg.read_text()  # resolved
    assert ps_json(root, env)["made"]["state"] == "created"
    cp = mlc(["exp", "create", "made", "--config", "configs/tiny.yaml"], root, env, check=False)
    assert cp.returncode == 1 and "already exists" in cp.stderr
    mlc(["train", "--detach", "--experiment", "made"], root, env)
    mlc(["logs", "made", "-f"], root, env)
    assert ps_json(root, env)["made"]["state"] == "succeeded"
    assert read_json(root / "experiments" / "made" / "results" / "metrics.json")["epochs"] == 2


def test_status_reports_host_gpu_and_running_runs(project):
    root, env = project
    st = json.loads(mlc(["status", "--json"], root, env).stdout)
    assert st["gpu"]["available"] and st["gpu"]["gpus"][0]["name"] == "NVIDIA GeForce RTX 3090"
    assert st["disk"]["free_gb"] > 0 and st["cpus"] >= 1 and st["runs"] == []
    text = mlc(["status"], root, env).stdout
    assert "RTX 3090" in text and "util 37%" in text and "55°C" in text
    no_gpu_env = dict(env, PATH="/usr/bin:/bin")
    cp = subprocess.run([sys.executable, "-m", "mlconnect", "status"], cwd=root, env=no_gpu_env,
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0 and "no GPU (nvidia-smi not found" in cp.stdout


def test_queue_from_the_cli_and_force_restart(project):
    root, env = project
    mlc(["train", "--queue", "--config", "configs/tiny.yaml", "--experiment", "q1",
         "--set", "epochs=8", "--set", "stopping_step=100"], root, env)
    out = mlc(["train", "--queue", "--config", "configs/tiny.yaml", "--experiment", "q2"], root, env).stdout
    assert "q2: queued" in out
    assert ps_json(root, env)["q2"]["state"] == "queued"
    mlc(["logs", "q2", "-f"], root, env)  # follows a queued run through to its end
    s1 = read_json(root / "experiments" / "q1" / "status.json")
    s2 = read_json(root / "experiments" / "q2" / "status.json")
    assert s1["state"] == s2["state"] == "succeeded"
    assert s2["started"] >= s1["ended"]  # one at a time, in order
    # --force starts over; the launcher's own files survive the trainer's fresh start.
    old_run = s2["run_id"]
    mlc(["train", "--detach", "--force", "--config", "configs/tiny.yaml", "--experiment", "q2"], root, env)
    log = mlc(["logs", "q2", "-f"], root, env).stdout
    s2b = read_json(root / "experiments" / "q2" / "status.json")
    assert s2b["run_id"] != old_run and s2b["state"] == "succeeded" and s2b["exit_code"] == 0
    assert old_run not in log and log.count("training SASRec") == 1


def test_train_json_prints_only_json_on_stdout(project):
    """`--json` is for scripts: the progress lines go to stderr, stdout parses as one JSON object."""
    root, env = project
    cp = mlc(["train", "--config", "configs/tiny.yaml", "--experiment", "js", "--json"], root, env)
    res = json.loads(cp.stdout)
    assert res["experiment"] == "js" and res["epochs"] == 2
    assert "training SASRec" in cp.stderr and "valid" in cp.stderr
