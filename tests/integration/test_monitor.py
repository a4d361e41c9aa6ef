"""`mlconnect monitor --once` / `ls` through the real CLI on experiment folders in the documented format.

Plus real trainings: a finished one, and one still running in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _cli(cwd, *args):
    env = dict(os.environ, MLCONNECT_HOST="", COLUMNS="120")
    return subprocess.run([sys.executable, "-m", "mlconnect", *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=60)


def _exp(tmp_path, name, progress_text):
    d = tmp_path / "experiments" / name
    d.mkdir(parents=True)
    (d / "progress.json").write_text(progress_text)
    return d


def test_once_finished_json_and_ls(tmp_path):
    _exp(tmp_path, "e1", json.dumps({"state": "finished", "model": "SASRec", "dataset": "toy", "epoch": 2,
                                     "epochs": 2, "valid_metric": "ndcg@10", "best_valid": 0.05}))
    cp = _cli(tmp_path, "monitor", "e1", "--once")
    assert cp.returncode == 0, cp.stderr
    assert "succeeded" in cp.stdout and "2/2" in cp.stdout
    v = json.loads(_cli(tmp_path, "monitor", "e1", "--json").stdout)
    assert v["state"] == "succeeded" and v["epoch"] == 2
    rows = json.loads(_cli(tmp_path, "ls", "--json").stdout)
    assert rows[0]["name"] == "e1" and rows[0]["best_value"] == 0.05


def test_unknown_and_corrupt_are_one_line_errors(tmp_path):
    _exp(tmp_path, "bad", '{"state": "runn')
    for name, words in (("nope", "unknown experiment"), ("bad", "not valid JSON")):
        cp = _cli(tmp_path, "monitor", name, "--once")
        assert cp.returncode == 1 and words in cp.stderr and cp.stderr.startswith("error:")
        assert len(cp.stderr.strip().splitlines()) == 1


def _train_argv(tmp_path, name, epochs):
    return [sys.executable, "-m", "mlconnect", "train", "--data-path", str(tmp_path / "data"),
            "--dataset", "tiny", "--experiment", name, "--set", f"epochs={epochs}",
            "--set", "train_batch_size=100", "--set", "hidden_size=16", "--set", "inner_size=32",
            "--set", "num_threads=1", "--set", "progress_interval_s=0", "--set", "stopping_step=1000"]


def test_once_on_real_finished_and_running_runs(tmp_path):
    import time

    from mlconnect.data.synth import generate

    generate(tmp_path / "data", "tiny", n_users=120, n_items=80, n_interactions=4000, seed=3)
    env = dict(os.environ, OMP_NUM_THREADS="1", MLCONNECT_HOST="")
    subprocess.run(_train_argv(tmp_path, "done", 2), cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=300)
    v = json.loads(_cli(tmp_path, "monitor", "done", "--json").stdout)
    assert v["state"] == "succeeded" and v["epoch"] == 2 and v["epochs"] == 2
    out = _cli(tmp_path, "monitor", "done", "--once").stdout
    assert "succeeded" in out and "2/2" in out

    proc = subprocess.Popen(_train_argv(tmp_path, "live", 200), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        progress = tmp_path / "experiments" / "live" / "progress.json"
        deadline = time.monotonic() + 120
        seen = None
        while time.monotonic() < deadline:
            try:
                seen = json.loads(progress.read_text())
            except (OSError, ValueError):
                seen = None
            if seen and seen.get("epoch", 0) >= 1:
                break
            time.sleep(0.2)
        assert seen and seen["epoch"] >= 1, "the training never finished an epoch"
        v = json.loads(_cli(tmp_path, "monitor", "live", "--json").stdout)
        assert v["state"] == "running" and seen["epoch"] <= v["epoch"] < 200 and v["epochs"] == 200
        out = _cli(tmp_path, "monitor", "live", "--once").stdout
        assert "running" in out and "/200" in out
    finally:
        proc.terminate()
        proc.wait(timeout=60)
