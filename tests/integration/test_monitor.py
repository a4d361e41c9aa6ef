"""`mlconnect monitor --once` / `ls` through the real CLI on experiment folders in the documented format.

TODO (not done before the deadline): the same on a real training running in a subprocess.
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
    assert "finished" in cp.stdout and "2/2" in cp.stdout
    v = json.loads(_cli(tmp_path, "monitor", "e1", "--json").stdout)
    assert v["state"] == "finished" and v["epoch"] == 2
    rows = json.loads(_cli(tmp_path, "ls", "--json").stdout)
    assert rows[0]["name"] == "e1" and rows[0]["best_value"] == 0.05


def test_unknown_and_corrupt_are_one_line_errors(tmp_path):
    _exp(tmp_path, "bad", '{"state": "runn')
    for name, words in (("nope", "unknown experiment"), ("bad", "not valid JSON")):
        cp = _cli(tmp_path, "monitor", name, "--once")
        assert cp.returncode == 1 and words in cp.stderr and cp.stderr.startswith("error:")
        assert len(cp.stderr.strip().splitlines()) == 1
