"""`compare` and `ls` in an 80-column terminal: every value whole, every line within 80, --json complete.

The experiment folders are written by hand (config.yaml + results/metrics.json, as the engine writes
them): the tables are what is under test, not training.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path


def _experiment(root: Path, name: str, hidden: int, ndcg: float) -> None:
    d = root / "experiments" / name
    (d / "results").mkdir(parents=True)
    (d / "config.yaml").write_text(f"model: SASRec\ndataset: ml-100k\nhidden_size: {hidden}\n"
                                   f"learning_rate: {0.001 * hidden / 32}\nepochs: 50\n")
    (d / "results" / "metrics.json").write_text(json.dumps({
        "experiment": name, "model": "SASRec", "dataset": "ml-100k", "valid_metric": "ndcg@10",
        "best_epoch": 7, "epochs": 12, "best_valid": {"ndcg@10": ndcg}, "wall_time_s": 80.1 + hidden,
        "throughput_tokens_per_s": 51234.0, "peak_gpu_mem_mb": None, "device": "cpu",
        "test": {"hit@10": 0.125, "mrr@10": 0.04, "ndcg@10": ndcg - 0.005, "precision@10": 0.0125,
                 "recall@10": 0.125}}))


def test_compare_reads_at_80_columns(tmp_path: Path) -> None:
    for name, hidden, ndcg in (("baseline_small", 32, 0.061), ("baseline_large", 64, 0.066)):
        _experiment(tmp_path, name, hidden, ndcg)
    env = {**os.environ, "COLUMNS": "80", "MLCONNECT_HOST": ""}
    cp = subprocess.run([sys.executable, "-m", "mlconnect", "compare", "baseline_small", "baseline_large"],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    lines = cp.stdout.splitlines()
    assert max(len(ln) for ln in lines) <= 80, cp.stdout
    assert "…" not in cp.stdout, cp.stdout  # no cell cut
    for whole in ("baseline_small", "baseline_large", "SASRec", "ml-100k", "hidden_size", "learning_rate",
                  "throughput_tokens_per_s", "test/precision@10", "0.066*", "5.123e+04"):
        assert whole in cp.stdout, (whole, cp.stdout)
    assert re.search(r"│ hidden_size\s+│ 32\s+│ 64\s+│", cp.stdout), cp.stdout  # one column per experiment
    full = subprocess.run([sys.executable, "-m", "mlconnect", "compare", "baseline_small", "baseline_large",
                           "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    doc = json.loads(full.stdout)  # --json is never fitted: every field, whatever the terminal
    assert {r["name"] for r in doc["rows"]} == {"baseline_small", "baseline_large"}
    assert all(r["test/recall@10"] == 0.125 and r["config"]["hidden_size"] in (32, 64) for r in doc["rows"])


def test_ls_reads_at_80_columns(tmp_path: Path) -> None:
    names = ("baseline_hidden_32_lr_0.001", "baseline_hidden_64_lr_0.002", "gru4rec_hidden_64_dropout_0.3")
    for i, name in enumerate(names):
        _experiment(tmp_path, name, 32 * (i + 1), 0.06 + i / 1000)
    env = {**os.environ, "COLUMNS": "80", "MLCONNECT_HOST": ""}
    cp = subprocess.run([sys.executable, "-m", "mlconnect", "ls"], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert max(len(ln) for ln in cp.stdout.splitlines()) <= 80, cp.stdout
    assert "…" not in cp.stdout and all(n in cp.stdout for n in names), cp.stdout
    assert "same in every row: model=SASRec, dataset=ml-100k" in cp.stdout, cp.stdout
    js = subprocess.run([sys.executable, "-m", "mlconnect", "ls", "--json"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=60)
    rows = json.loads(js.stdout)
    assert [r["name"] for r in rows] == sorted(names) and all(r["model"] == "SASRec" for r in rows)
