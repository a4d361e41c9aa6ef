"""Real trainings on CPU: quality against a popularity baseline, resume equivalence, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mlconnect.data.synth import generate
from mlconnect.engine.checkpoint import load_checkpoint, save_checkpoint
from mlconnect.engine.config import load_config
from mlconnect.engine.data import load_dataset, split_leave_one_out
from mlconnect.engine.inference import Recommender
from mlconnect.engine.metrics import MetricAccumulator
from mlconnect.engine.trainer import train
from mlconnect.errors import ExperimentError, MlconnectError

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def most_popular_ndcg(cfg) -> float:
    ds = load_dataset(cfg)
    sp = split_leave_one_out(ds, cfg.max_len)
    counts = np.bincount(np.concatenate(sp.train), minlength=ds.n_items).astype(np.float32)
    users, _, target = sp.eval_inputs("test")
    scores = torch.from_numpy(np.tile(counts, (len(users), 1)))
    scores[:, 0] = float("-inf")
    acc = MetricAccumulator(["NDCG"], [10])
    acc.update(scores, torch.from_numpy(target))
    return acc.compute()["ndcg@10"]


@pytest.mark.slow
def test_short_sasrec_run_beats_most_popular(datasets_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "baseline.yaml",
                      {"data_path": str(datasets_dir), "epochs": 4, "num_threads": 2, "seed": 7})
    results = train(cfg, tmp_path / "exp")
    pop = most_popular_ndcg(cfg)
    assert results["test"]["ndcg@10"] > 1.3 * pop, (results["test"], pop)
    paths = tmp_path / "exp"
    for rel in ("config.yaml", "training.log", "progress.json", "meta.json", "results/metrics.json",
                "checkpoints/best.pt", "checkpoints/last.pt", "checkpoints/vocab.json"):
        assert (paths / rel).is_file(), rel
    assert list((paths / "logs").glob("events.out.tfevents.*"))
    progress = json.loads((paths / "progress.json").read_text())
    assert progress["state"] == "finished" and progress["epoch"] == 4
    meta = json.loads((paths / "meta.json").read_text())
    assert meta["device"] == "cpu" and meta["torch"] == torch.__version__ and meta["ended"]
    # The served path gives the same top-K as the engine's own scores.
    rec = Recommender.load(paths)
    hist = rec.user_history("1")
    top = rec.recommend([hist], k=5, exclude_seen=False)[0]
    assert len(top) == 5 and top[0][1] >= top[-1][1]
    with pytest.raises(ExperimentError, match="already exists"):
        train(cfg, paths)


def tiny_dataset(tmp_path: Path) -> Path:
    generate(tmp_path / "data", "tiny", n_users=120, n_items=80, n_interactions=4000, seed=3)
    return tmp_path / "data"


def train_cmd(data: Path, exp: Path, *extra: str) -> list[str]:
    """The CLI run of experiment ``exp.name``; run it with ``cwd=exp.parent.parent`` (``exp`` is
    ``<cwd>/experiments/<name>``: a name is a plain folder name, never a path)."""
    return [sys.executable, "-m", "mlconnect", "train", "--data-path", str(data), "--dataset", "tiny",
            "--experiment", exp.name, "--set", "epochs=3", "--set", "train_batch_size=100",
            "--set", "hidden_size=16", "--set", "inner_size=32", "--set", "num_threads=1",
            "--set", "progress_interval_s=0", "--set", "valid_metric=NDCG@10", *extra]


@pytest.mark.parametrize("extra", [[], ["--set", "ema_decay=0.9"]], ids=["plain", "ema"])
def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path: Path, extra: list[str]) -> None:
    data = tiny_dataset(tmp_path)
    whole = tmp_path / "experiments" / "whole"
    run = {"env": ENV, "cwd": tmp_path}
    subprocess.run(train_cmd(data, whole, *extra), check=True, capture_output=True, timeout=300, **run)
    cut = tmp_path / "experiments" / "cut"
    proc = subprocess.Popen(
        train_cmd(data, cut, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **run
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until it is inside the second epoch
        try:
            p = json.loads((cut / "progress.json").read_text())
            if p["epoch"] >= 1 and p["step"] >= 1:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "--resume" in err
    stopped = json.loads((cut / "progress.json").read_text())
    assert stopped["state"] == "stopped" and stopped["epoch"] < 3
    assert 0 < stopped["step"] < stopped["steps_per_epoch"]  # cut inside an epoch
    subprocess.run(train_cmd(data, cut, *extra, "--resume"), check=True, capture_output=True, timeout=300, **run)
    a = json.loads((whole / "results" / "metrics.json").read_text())
    b = json.loads((cut / "results" / "metrics.json").read_text())
    assert a["best_valid"] == b["best_valid"] and a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]
    # The cut epoch's mean loss counts the steps before the cut too (issue 10, failure 7).
    la = json.loads((whole / "progress.json").read_text())["loss_history"]
    lb = json.loads((cut / "progress.json").read_text())["loss_history"]
    assert la == lb and len(la) == 3


SAVER = """
import sys, torch
from mlconnect.engine.checkpoint import save_checkpoint
path = sys.argv[1]
save_checkpoint(path, {"epoch": 1, "w": torch.ones(10)})
print("first saved", flush=True)
big = {"epoch": 2, "w": torch.zeros(60_000_000)}
while True:
    save_checkpoint(path, big)
"""


def test_kill_during_save_leaves_previous_checkpoint_loadable(tmp_path: Path) -> None:
    path = tmp_path / "ck" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "first saved"
    deadline = time.monotonic() + 60
    while not list(path.parent.glob(".last.pt.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    state = load_checkpoint(path)
    assert state["epoch"] in (1, 2) and state["w"].numel() in (10, 60_000_000)
    save_checkpoint(path, {"epoch": 3})  # the next save cleans the dead temp file
    assert not list(path.parent.glob(".last.pt.*.tmp"))
    assert load_checkpoint(path)["epoch"] == 3


def test_checkpoints_refuse_pickled_objects(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"obj": Path("/etc/passwd")}, evil)
    with pytest.raises(ExperimentError, match="cannot load checkpoint"):
        load_checkpoint(evil)


@pytest.mark.parametrize("model,extra", [
    ("GRU4Rec", {}), ("BERT4Rec", {}), ("SASRec", {"sampled_negatives": 20}), ("SASRec", {"loss_type": "BPR"}),
    ("SASRec", {"mask_history": True, "topk": [5, 10]}),
], ids=["gru4rec", "bert4rec", "sampled-softmax", "bpr", "mask-history"])
def test_other_models_and_losses_train_and_serve(tmp_path: Path, model: str, extra: dict) -> None:
    data = tiny_dataset(tmp_path)
    cfg = load_config(None, {"model": model, "data_path": str(data), "dataset": "tiny", "epochs": 2,
                             "hidden_size": 16, "num_threads": 1, "train_batch_size": 400, **extra})
    results = train(cfg, tmp_path / "exp")
    assert results["epochs"] == 2 and 0.0 <= results["test"]["mrr@10"] <= 1.0
    rec = Recommender.load(tmp_path / "exp")
    out = rec.recommend([rec.user_history(rec.user_ids[1])], k=3)
    assert len(out[0]) == 3


def test_train_sequential_model_script_end_to_end(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "train_sequential_model.py"), "--config",
                           str(REPO / "configs" / "baseline.yaml"), "--experiment", "exp_001",
                           "--data-path", str(data), "--dataset", "tiny", "--set", "epochs=1",
                           "--set", "num_threads=1"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ndcg@10" in proc.stdout
    assert (tmp_path / "experiments" / "exp_001" / "results" / "metrics.json").is_file()


def test_quickstart_falls_back_to_synthetic_offline(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mlconnect", "quickstart", "--data-path", str(tmp_path / "data"),
                           "--no-download", "--epochs", "1", "--experiment", "qs"], cwd=tmp_path,
                          env={**ENV, "MLCONNECT_DATA_PATH": ""}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "dataset: a synthetic dataset" in proc.stdout
    assert "ndcg@10" in proc.stdout and "mlconnect tensorboard qs" in proc.stdout
    results = json.loads((tmp_path / "experiments" / "qs" / "results" / "metrics.json").read_text())
    assert results["dataset"] == "synthetic" and results["epochs"] == 1


def test_no_user_with_a_valid_target_is_one_error_before_training(tmp_path: Path) -> None:
    """Every user with 3 interactions: RecBole's split gives them train and test targets but no valid one,
    so no epoch could be chosen as the best; the run refuses at once instead of keeping epoch 1."""
    d = tmp_path / "three"
    d.mkdir()
    body = "".join(f"u{u}\ti{(u + j) % 7}\t{j}\n" for u in range(30) for j in range(3))
    (d / "three.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + body)
    cfg = load_config(None, {"data_path": str(tmp_path), "dataset": "three", "epochs": 1, "hidden_size": 16,
                             "num_threads": 1, "load_col": {"inter": ["user_id", "item_id", "timestamp"]}})
    with pytest.raises(MlconnectError, match="has no user with a valid target") as err:
        train(cfg, tmp_path / "exp")
    assert "4 interactions" in err.value.hint
