"""The large-catalog paths through the real trainer: chunked CE, gBCE, chunked and sampled evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from mlconnect.data.synth import generate
from mlconnect.engine.config import load_config
from mlconnect.engine.data import load_dataset, split_leave_one_out
from mlconnect.engine.evaluation import evaluate
from mlconnect.engine.inference import Recommender
from mlconnect.engine.trainer import train

SMALL = {"dataset": "tiny", "epochs": 1, "train_batch_size": 200, "hidden_size": 16, "inner_size": 32,
         "num_threads": 1, "progress_interval_s": 0, "valid_metric": "NDCG@10", "metrics": ["Hit", "NDCG"],
         "topk": [10], "save_checkpoints": False}


def test_chunked_ce_and_gbce_train_and_sampled_evaluation_ranks_no_worse(tmp_path: Path) -> None:
    generate(tmp_path / "data", "tiny", n_users=120, n_items=80, n_interactions=4000, seed=3)
    base = {**SMALL, "data_path": str(tmp_path / "data")}
    ce = train(load_config(None, {**base, "loss_chunk_size": 7, "eval_chunk_size": 5,
                                  "eval_args": {"mode": {"valid": "uni20", "test": "pop20"}}}), tmp_path / "ce")
    gb = train(load_config(None, {**base, "loss_type": "gBCE", "sampled_negatives": 8, "gbce_t": 0.75}),
               tmp_path / "gbce")
    for r in (ce, gb):
        assert all(0.0 <= v <= 1.0 and math.isfinite(v) for v in r["test"].values()), r["test"]
    # The same weights ranked against 20 sampled negatives can only do as well or better than
    # against the whole catalog: every sampled negative ahead of the target is also ahead in full.
    cfg = load_config(None, {**base, "eval_chunk_size": 5})
    ds = load_dataset(cfg)
    split = split_leave_one_out(ds, cfg.max_len)
    model = Recommender.load(tmp_path / "ce").model
    full = evaluate(model, split, "test", cfg, torch.device("cpu"))
    sampled = evaluate(model, split, "test", load_config(None, {**base, "eval_args": {"mode": "uni20"}}),
                       torch.device("cpu"))
    assert sampled["hit@10"] >= full["hit@10"] and sampled["hit@10"] > 0.3
