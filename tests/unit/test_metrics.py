"""Full-ranking metrics: RecBole 1.2.1's numbers on its own fixture, batching, history masking."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mlconnect.engine.metrics import METRICS, MetricAccumulator, mask_history_, parse_metric_names
from mlconnect.errors import ConfigError

TOPK = [1, 5, 10, 20]


def _case(recbole_fixtures):
    data = np.load(recbole_fixtures / "metrics-case.npz")
    expected = json.loads((recbole_fixtures / "metrics-expected.json").read_text())
    return torch.from_numpy(data["scores"]), torch.from_numpy(data["positive"]), expected


def test_reproduces_recbole_fixture(recbole_fixtures):
    scores, positive, expected = _case(recbole_fixtures)
    # What the data says about padding: column 0 is -inf in every one of the 500 rows and no
    # positive is item 0, i.e. the matrix was captured after RecBole's `scores[:, 0] = -inf`.
    assert torch.isneginf(scores[:, 0]).all()
    assert (positive > 0).all()
    acc = MetricAccumulator(["Hit", "NDCG", "MRR", "Recall", "Precision"], TOPK)
    acc.update(scores.clone(), positive)
    got = acc.compute()
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name


def test_padding_column_is_never_ranked(recbole_fixtures):
    scores, positive, expected = _case(recbole_fixtures)
    forged = scores.clone()
    forged[:, 0] = 1e9  # a caller that forgot the padding: update() still excludes column 0
    acc = MetricAccumulator(list(METRICS), TOPK)
    acc.update(forged, positive)
    assert torch.isneginf(forged[:, 0]).all()
    got = acc.compute()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name


def test_batches_of_any_size_accumulate_to_the_one_batch_result(recbole_fixtures):
    scores, positive, _ = _case(recbole_fixtures)
    whole = MetricAccumulator(list(METRICS), TOPK)
    whole.update(scores.clone(), positive)
    pieces = MetricAccumulator(list(METRICS), TOPK)
    start = 0
    for size in (1, 7, 64, 128, 300):
        pieces.update(scores[start:start + size].clone(), positive[start:start + size])
        start += size
    assert start == scores.shape[0] and pieces.n_rows == 500
    a, b = whole.compute(), pieces.compute()
    for name in a:
        assert a[name] == pytest.approx(b[name], abs=1e-12)


def test_hand_computed_ranks():
    # Row 0: the positive (item 3) is ranked 2nd; row 1: 1st; row 2: outside the top 3.
    scores = torch.tensor([
        [0.0, 0.1, 0.9, 0.5, 0.2],
        [0.0, 0.1, 0.2, 0.3, 0.9],
        [0.0, 0.9, 0.8, 0.7, 0.1],
    ])
    positive = torch.tensor([3, 4, 4])
    acc = MetricAccumulator(["hit", "ndcg", "mrr", "precision", "recall"], [1, 3])
    acc.update(scores, positive)
    got = acc.compute()
    assert got["hit@1"] == pytest.approx(1 / 3)
    assert got["hit@3"] == pytest.approx(2 / 3)
    assert got["recall@3"] == pytest.approx(2 / 3)
    assert got["mrr@3"] == pytest.approx((1 / 2 + 1) / 3)
    assert got["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1) / 3)
    assert got["precision@3"] == pytest.approx((1 / 3 + 1 / 3) / 3)
    assert got["precision@1"] == pytest.approx(1 / 3)


def test_ties_follow_torch_topk_order():
    # Every item ties: RecBole's rank is the positive's position in topk's output, whatever it is.
    scores = torch.zeros(4, 12)
    positive = torch.tensor([1, 5, 9, 11])
    order = torch.topk(scores.clone().index_fill_(1, torch.tensor([0]), float("-inf")), 10, dim=1).indices
    acc = MetricAccumulator(["mrr"], [10])
    acc.update(scores.clone(), positive)
    expected = []
    for row, pos in zip(order.tolist(), positive.tolist(), strict=True):
        expected.append(1 / (row.index(pos) + 1) if pos in row else 0.0)
    assert acc.compute()["mrr@10"] == pytest.approx(sum(expected) / 4)


def test_k_larger_than_catalog_and_empty():
    acc = MetricAccumulator(["hit"], [50])
    assert math.isnan(acc.compute()["hit@50"])
    acc.update(torch.tensor([[0.0, 0.2, 0.1]]), torch.tensor([2]))
    assert acc.compute() == {"hit@50": 1.0}


def test_parse_metric_names():
    assert parse_metric_names(["Recall", "NDCG"], [10, 20]) == [
        "recall@10", "recall@20", "ndcg@10", "ndcg@20"]
    assert parse_metric_names(["MRR", "NDCG@5"], 10) == ["mrr@10", "ndcg@5"]
    with pytest.raises(ConfigError) as info:
        parse_metric_names(["Hit", "MAP", "GAUC"], [10, 0])
    text = str(info.value)
    assert "'MAP'" in text and "'GAUC'" in text and "topk" in text
    assert len(info.value.problems) == 3


def test_mask_history_in_place():
    scores = torch.arange(8, dtype=torch.float32).repeat(2, 1)
    scores[:, 0] = float("-inf")
    history = torch.tensor([[0, 0, 2, 5], [3, 3, 7, 1]])
    keep = torch.tensor([5, 6])
    out = mask_history_(scores, history, keep=keep)
    assert out is scores
    inf = float("-inf")
    assert scores[0].tolist() == [inf, 1, inf, 3, 4, 5, 6, 7]   # 5 is row 0's positive: kept
    assert scores[1].tolist() == [inf, inf, 2, inf, 4, 5, 6, inf]
    plain = torch.ones(1, 4)
    mask_history_(plain, torch.tensor([[0, 2]]))
    assert plain.tolist() == [[1.0, 1.0, inf, 1.0]]  # padding index 0 is ignored, not masked


def test_masking_changes_the_ranking():
    scores = torch.tensor([[float("-inf"), 0.9, 0.8, 0.1]])
    positive = torch.tensor([3])
    acc = MetricAccumulator(["hit"], [1])
    acc.update(mask_history_(scores.clone(), torch.tensor([[1, 2]]), keep=positive), positive)
    assert acc.compute()["hit@1"] == 1.0
