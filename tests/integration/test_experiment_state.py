"""Issue 10, failure 4: one experiment state, the same word in ps, ls, monitor and compare; a
killed run never reads running; stop on a run that just finished changes nothing.

Real trainings in real processes, killed with real signals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from runs_support import cli_env, mlc, ps_json, read_json, tiny_project, wait_for

from mlconnect.errors import ExperimentError
from mlconnect.layout import ExperimentPaths
from mlconnect.runs import launcher

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def project(tmp_path):
    return tiny_project(tmp_path, epochs=1), cli_env(tmp_path)


def _states(root, env, name):
    ls = {r["name"]: r["state"] for r in json.loads(mlc(["ls", "--json"], root, env).stdout)}
    mon = json.loads(mlc(["monitor", name, "--json"], root, env).stdout)["state"]
    return ps_json(root, env)[name]["state"], ls[name], mon


@pytest.mark.slow  # several real trainings
def test_finished_and_killed_runs_read_the_same_everywhere(project):
    root, env = project
    mlc(["train", "--config", "configs/tiny.yaml", "-e", "done"], root, env)
    assert _states(root, env, "done") == ("succeeded",) * 3
    mlc(["train", "--config", "configs/tiny.yaml", "-e", "done2"], root, env)
    rows = json.loads(mlc(["compare", "done", "done2", "--json"], root, env).stdout)["rows"]
    assert [r["state"] for r in rows] == ["succeeded", "succeeded"]

    proc = subprocess.Popen([sys.executable, "-m", "mlconnect", "train", "--config", "configs/tiny.yaml",
                             "-e", "killed", "--set", "epochs=500"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (read_json(root / "experiments/killed/progress.json") or {}).get("state") == "running",
                 timeout=90, what="the run to report progress")
        assert _states(root, env, "killed") == ("running",) * 3
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    ps, ls, mon = _states(root, env, "killed")
    assert ps == ls == mon == "lost"
    assert "gone" in ps_json(root, env)["killed"]["reason"]


def test_stop_right_after_the_run_finished_changes_nothing(project):
    root, env = project
    mlc(["train", "--detach", "--config", "configs/tiny.yaml", "-e", "quick"], root, env)
    paths = ExperimentPaths(root / "experiments" / "quick")
    # The moment the trainer has written its results, before its process has exited.
    wait_for(lambda: (read_json(paths.progress) or {}).get("state") == "finished", timeout=120,
             interval=0.01, what="the run to finish")
    t0 = time.monotonic()
    with pytest.raises(ExperimentError, match=r"not running \(state: succeeded\)"):
        launcher.stop_run(paths, grace_s=5)
    assert time.monotonic() - t0 < 30
    st = read_json(paths.status)
    assert st["state"] == "succeeded" and st["exit_code"] == 0 and not st.get("stop_requested")
    again = mlc(["stop", "quick"], root, env, check=False)
    assert again.returncode == 1 and "not running (state: succeeded)" in again.stderr
    assert read_json(paths.status)["state"] == "succeeded"
