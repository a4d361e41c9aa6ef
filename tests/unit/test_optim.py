"""Row-sparse item-table updates: LazyAdamW is Adam/AdamW on the rows a step touched, and
``sparse_item_grad: auto`` turns it on only for large catalogs with a sampled loss on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mlconnect.data.synth import generate
from mlconnect.engine.config import load_config
from mlconnect.engine.models import build_model
from mlconnect.engine.optim import LazyAdamW, SplitOptimizer
from mlconnect.engine.runtime import SPARSE_MIN_ITEMS, make_optimizer, sparse_rows
from mlconnect.engine.trainer import train
from mlconnect.errors import ConfigError, MlconnectError


@pytest.mark.parametrize("adamw", [True, False], ids=["adamw", "adam"])
def test_lazy_adam_with_dense_gradients_is_torch_adam(adamw: bool) -> None:
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(20, 8, generator=g, dtype=torch.float64)
    a, b = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    ref = (torch.optim.AdamW if adamw else torch.optim.Adam)([a], lr=0.01, weight_decay=0.1)
    lazy = LazyAdamW([b], lr=0.01, weight_decay=0.1, decoupled=adamw)
    for _ in range(5):
        grad = torch.randn(20, 8, generator=g, dtype=torch.float64)
        a.grad, b.grad = grad.clone(), grad.clone()
        ref.step()
        lazy.step()
    assert torch.allclose(a, b, atol=1e-12), (a - b).abs().max()


def test_lazy_adamw_updates_only_the_rows_of_a_sparse_gradient() -> None:
    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(50, 4, generator=g, dtype=torch.float64)
    dense_emb = nn.Embedding(50, 4, _weight=w0.clone())
    sparse_emb = nn.Embedding(50, 4, _weight=w0.clone(), sparse=True)
    ref = torch.optim.AdamW(dense_emb.parameters(), lr=0.05, weight_decay=0.1)
    lazy = LazyAdamW(sparse_emb.parameters(), lr=0.05, weight_decay=0.1)
    idx = torch.tensor([[3, 7, 7], [49, 3, 0]])  # repeats are summed, as in the dense gradient
    target = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    for emb, opt in ((dense_emb, ref), (sparse_emb, lazy)):
        ((emb(idx) - target) ** 2).sum().backward()
        opt.step()
    assert sparse_emb.weight.grad.is_sparse
    touched = torch.tensor([0, 3, 7, 49])
    assert torch.allclose(sparse_emb.weight[touched], dense_emb.weight[touched], atol=1e-12)
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[touched] = False
    # dense AdamW decays every row; the lazy step leaves rows the batch did not use alone
    assert torch.equal(sparse_emb.weight[untouched], w0[untouched])
    assert not torch.allclose(dense_emb.weight[untouched], w0[untouched])


def _cfg(**over: object):
    return load_config(None, {"data_path": "/nonexistent", "dataset": "x", **over})


def test_auto_turns_on_only_for_a_large_catalog_with_a_sampled_loss_on_cpu() -> None:
    cpu, big = torch.device("cpu"), SPARSE_MIN_ITEMS
    assert sparse_rows(_cfg(sampled_negatives=256), big, cpu)
    assert sparse_rows(_cfg(loss_type="gBCE", sampled_negatives=8), big, cpu)
    assert not sparse_rows(_cfg(sampled_negatives=256), 1_683, cpu)  # ml-100k: dense AdamW as before
    assert not sparse_rows(_cfg(), big, cpu)  # full-catalog CE: the gradient is dense anyway
    assert not sparse_rows(_cfg(sampled_negatives=256), big, torch.device("cuda"))
    assert not sparse_rows(_cfg(sampled_negatives=256, learner="sgd"), big, cpu)
    assert not sparse_rows(_cfg(sampled_negatives=256), big, cpu, world_size=2)
    assert not sparse_rows(_cfg(sampled_negatives=256, sparse_item_grad=False), big, cpu)
    assert sparse_rows(_cfg(sampled_negatives=256, sparse_item_grad=True), 10, cpu)
    with pytest.raises(ConfigError, match="sparse_item_grad: true, but a sampled loss is needed"):
        sparse_rows(_cfg(sparse_item_grad=True), big, cpu)
    with pytest.raises(ConfigError, match="sparse_item_grad must be auto, true or false"):
        _cfg(sparse_item_grad="yes")


def test_split_optimizer_state_round_trips_and_refuses_a_dense_state() -> None:
    cfg = _cfg(sampled_negatives=8, learner="adamw", hidden_size=8, inner_size=16)
    model = build_model(cfg, 30, sparse_rows=True)
    opt = make_optimizer(cfg, model)
    assert isinstance(opt, SplitOptimizer) and len(opt.param_groups) == 2
    x = torch.randint(1, 30, (4, cfg.max_len))
    model.training_loss(x, x, "CE", 8).backward()
    assert model.item_embedding.weight.grad.is_sparse
    opt.step()
    again = make_optimizer(cfg, model)
    again.load_state_dict(opt.state_dict())
    assert again.sparse.state_dict()["state"][0]["step"] == 1
    with pytest.raises(MlconnectError, match="dense item table"):
        again.load_state_dict(torch.optim.AdamW(model.parameters()).state_dict())


def test_training_with_sparse_item_rows_learns(tmp_path: Path) -> None:
    generate(tmp_path / "data", "tiny", n_users=100, n_items=60, n_interactions=3000, seed=3)
    cfg = load_config(None, {"data_path": str(tmp_path / "data"), "dataset": "tiny", "epochs": 2,
                             "train_batch_size": 200, "hidden_size": 16, "inner_size": 32, "num_threads": 1,
                             "progress_interval_s": 0, "metrics": ["Hit"], "topk": [10], "valid_metric": "Hit@10",
                             "sampled_negatives": 16, "sparse_item_grad": True, "save_checkpoints": False})
    r = train(cfg, tmp_path / "exp")
    assert r["test"]["hit@10"] > 10 / 60  # better than a random ranking of the 60 items
