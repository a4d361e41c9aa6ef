"""Tables fit the terminal: transposed, or reduced to what differs, and they say what was left out."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from mlconnect.cli.tablefit import FIELD, fit_table, table_width

WIDE = ["name", "model", "dataset", "hidden_size", "learning_rate", "best_valid", "epochs", "wall_time_s",
        "throughput_tokens_per_s", "peak_gpu_mem_mb", "test/hit@10", "test/mrr@10", "test/ndcg@10",
        "test/precision@10"]  # the 14 columns that came out as "ba…", "SA…" at 80 columns


def _rows(n: int) -> list[dict[str, str]]:
    return [{"name": f"baseline_{i}", "model": "SASRec", "dataset": "ml-100k", "hidden_size": str(32 * (i + 1)),
             "learning_rate": "0.001", "best_valid": f"0.06{i}", "epochs": "50", "wall_time_s": f"8{i}.25",
             "throughput_tokens_per_s": "5.123e+04", "peak_gpu_mem_mb": "-", "test/hit@10": f"0.12{i}",
             "test/mrr@10": f"0.04{i}", "test/ndcg@10": f"0.06{i}", "test/precision@10": f"0.012{i}"}
            for i in range(n)]


def test_a_table_that_fits_is_untouched() -> None:
    rows = _rows(2)
    f = fit_table(rows, ["name", "model"], 80, key="name")
    assert f.columns == ["name", "model"] and f.rows == rows and f.notes == []


def test_fourteen_columns_at_80_are_transposed_with_every_value_whole() -> None:
    rows = _rows(3)
    assert table_width(rows, WIDE) > 80
    f = fit_table(rows, WIDE, 80, key="name", allow_transpose=True)
    assert table_width(f.rows, f.columns) <= 80
    assert f.columns == [FIELD, "baseline_0", "baseline_1", "baseline_2"]
    assert [r[FIELD] for r in f.rows] == WIDE[1:]  # every field kept, in order
    for i, row in enumerate(rows):
        assert all(f.rows[j][f"baseline_{i}"] == row[c] for j, c in enumerate(WIDE[1:]))
    assert "transposed" in f.notes[0]


def test_without_transposing_it_keeps_what_differs_and_names_what_it_left_out() -> None:
    rows = _rows(12)  # too many to transpose
    f = fit_table(rows, WIDE, 80, key="name", allow_transpose=True)
    assert table_width(f.rows, f.columns) <= 80
    assert f.columns[0] == "name" and "model" not in f.columns  # the same in every row: said once
    assert f.notes[0].startswith("same in every row: model=SASRec, dataset=ml-100k, learning_rate=0.001")
    left = [c for c in WIDE if c not in f.columns and f"{c}=" not in f.notes[0]]
    assert left and f.notes[1].startswith(f"left out to fit 80 columns: {', '.join(left)}")


def test_duplicate_names_get_their_own_column() -> None:
    rows = _rows(2)
    rows[1]["name"] = rows[0]["name"]
    f = fit_table(rows, WIDE, 80, key="name", allow_transpose=True)
    assert f.columns == [FIELD, "baseline_0", "baseline_0#2"]


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
