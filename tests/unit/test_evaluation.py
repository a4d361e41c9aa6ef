"""Bounded-memory evaluation: chunked full ranking equals the whole matrix; RecBole's sampled modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlconnect.engine.config import load_config
from mlconnect.engine.data import Split
from mlconnect.engine.eval_sampling import phase_mode, sample_negatives, sampled_ranks, target_counts
from mlconnect.engine.evaluation import evaluate, topk_ranks
from mlconnect.engine.metrics import MetricAccumulator, mask_history_
from mlconnect.engine.models.base import SequentialRecommender
from mlconnect.errors import ConfigError, MlconnectError

# Two users over items 1..7 (0 is padding). RecBole's sequential rows are every interaction after
# the first, so user 1's targets are 5, 3 (train), 4 (valid), 6 (test); user 2's are 5 (train),
# 5 (valid), 1 (test). User 1's first item, 7, is nobody's target.
SEQ = {1: [7, 5, 3, 4, 6], 2: [2, 5, 5, 1]}


def _split() -> Split:
    train = [np.empty(0, dtype=np.int64)] + [np.asarray(s[:-2], dtype=np.int64) for s in SEQ.values()]
    return Split(train=train, valid_target=np.array([0, 4, 5]), test_target=np.array([0, 6, 1]), max_len=5)


class ItemIdScorer(SequentialRecommender):
    """Scores item i as i for every user: hand-checkable ranks (a tie at 3.0 for items 3 and 8)."""

    def __init__(self, n_items: int = 8) -> None:
        super().__init__()
        self.n_items = n_items
        self.table = torch.arange(n_items, dtype=torch.float32).unsqueeze(1)

    def last_hidden(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(items), 1)

    def item_table(self) -> torch.Tensor:
        return self.table


def _cfg(**over):
    return load_config(None, {"metrics": ["Hit", "NDCG", "MRR"], "topk": [1, 2, 3], "valid_metric": "MRR@3", **over})


def test_excluded_items_and_popularity_follow_recbole() -> None:
    sp = _split()
    # popularity = how often an item is a target over all phases (first items never count)
    assert target_counts(sp, 8).tolist() == [0, 1, 0, 1, 1, 3, 1, 0]
    rng_draws = 4000
    # uniform, valid phase of user 1: never 3, 4, 5 (targets so far); 7 (first item) is allowed
    neg = sample_negatives(sp, "valid", np.array([1]), 8, "uni", rng_draws, seed=1)[0]
    freq = np.bincount(neg, minlength=8) / rng_draws
    assert set(np.unique(neg)) == {1, 2, 6, 7}
    assert np.allclose(freq[[1, 2, 6, 7]], 0.25, atol=0.03)
    # test phase adds the test target 6
    neg = sample_negatives(sp, "test", np.array([1]), 8, "uni", 500, seed=1)[0]
    assert set(np.unique(neg)) == {1, 2, 7}
    # popularity, valid phase: user 1 may get 1 or 6 (one target each), user 2 1, 3, 4, 6
    neg = sample_negatives(sp, "valid", np.array([1, 2]), 8, "pop", rng_draws, seed=2)
    assert set(np.unique(neg[0])) == {1, 6} and abs((neg[0] == 1).mean() - 0.5) < 0.03
    assert set(np.unique(neg[1])) == {1, 3, 4, 6}
    # popularity, test phase of user 2: the test target 1 is now excluded
    neg = sample_negatives(sp, "test", np.array([2]), 8, "pop", 500, seed=2)[0]
    assert set(np.unique(neg)) == {3, 4, 6}
    # same seed, same negatives
    again = sample_negatives(sp, "valid", np.array([1, 2]), 8, "pop", rng_draws, seed=2)
    assert np.array_equal(again, sample_negatives(sp, "valid", np.array([1, 2]), 8, "pop", rng_draws, seed=2))


def test_sampled_ranks_count_distinct_negatives_and_break_ties_by_item_id() -> None:
    scores = torch.tensor([[0.5, 0.9, 0.9, 0.1, 0.5, 0.5],
                           [0.5, 0.4, 0.4, 0.4, 0.3, 0.2]])
    cand = torch.tensor([[4, 6, 6, 1, 2, 7],   # 6 twice counts once; 2 ties and has a lower id; 7 ties, higher
                         [4, 1, 1, 1, 2, 3]])
    assert sampled_ranks(scores, cand).tolist() == [2, 0]


def test_uni_mode_on_a_hand_computed_case() -> None:
    # With 200 uniform draws every allowed item is drawn, so the rank is the number of allowed
    # items scoring above the target. User 1 valid: target 4, allowed {1, 2, 6, 7} -> 6, 7 ahead:
    # rank 2 (full ranking: 5, 6, 7 -> rank 3). User 2 valid: target 5, allowed {1, 2, 3, 4, 6, 7}
    # -> 6, 7: rank 2. User 1 test: target 6, allowed {1, 2, 7} -> rank 1; user 2 test: target 1,
    # allowed {2, 3, 4, 6, 7} -> rank 5 (outside every K).
    sp, model = _split(), ItemIdScorer()
    got = evaluate(model, sp, "valid", _cfg(eval_args={"mode": "uni200"}), torch.device("cpu"))
    assert got["hit@2"] == 0.0 and got["hit@3"] == 1.0
    assert got["ndcg@3"] == pytest.approx(1 / math.log2(4))
    got = evaluate(model, sp, "test", _cfg(eval_args={"mode": {"valid": "full", "test": "uni200"}}),
                   torch.device("cpu"))
    assert got["mrr@3"] == pytest.approx((1 / 2 + 0) / 2)
    full = evaluate(model, sp, "valid", _cfg(), torch.device("cpu"))
    assert full["hit@3"] == 0.5  # full ranking: user 1's target is 4th (5, 6, 7 ahead), user 2's 3rd


def test_mode_parsing_accepts_recbole_forms_and_rejects_others() -> None:
    assert phase_mode({"mode": "pop100"}, "test") == ("pop", 100)
    assert phase_mode({"mode": {"valid": "uni50"}}, "test") == ("uni", 50)  # RecBole: one key sets both
    assert phase_mode({"mode": {"valid": "full", "test": "uni100"}}, "valid") is None
    assert _cfg(eval_args={"mode": {"valid": "uni100", "test": "pop100"}})["eval_args"]["mode"]["test"] == "pop100"
    with pytest.raises(ConfigError) as info:
        _cfg(eval_args={"mode": "uniform100"}, loss_type="gBCE", gbce_t=2, loss_chunk_size=0)
    text = str(info.value)
    assert "uniform100" in text and "sampled_negatives" in text and "gbce_t" in text and "loss_chunk_size" in text
    with pytest.raises(ConfigError, match="valid and test"):
        _cfg(eval_args={"mode": {"train": "uni100"}})


def test_a_user_with_nothing_left_to_sample_is_one_clear_error() -> None:
    sp = Split(train=[np.empty(0, dtype=np.int64), np.array([1, 2, 3])], valid_target=np.array([0, 1]),
               test_target=np.array([0, 3]), max_len=5)
    with pytest.raises(MlconnectError, match="every item"):
        sample_negatives(sp, "test", np.array([1]), 4, "uni", 10, seed=0)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_full_ranking_equals_the_whole_matrix(chunk: int) -> None:
    # Small integer embeddings: every score is exact in float32 whatever the matmul's order, so
    # ties are real ties in every chunking (random floats would only tie by accident of rounding).
    g = torch.Generator().manual_seed(0)
    n_items, b = 300, 40
    h = torch.randint(-3, 4, (b, 8), generator=g).float()
    table = torch.randint(-3, 4, (n_items, 8), generator=g).float()
    table[17] = table[5]
    target = torch.randint(1, n_items, (b,), generator=g)
    target[:3] = torch.tensor([5, 17, n_items - 1])
    h[0] = h[1]  # rows 0 and 1: the same user with targets 5 and 17, which tie
    hist = torch.randint(0, n_items, (b, 12), generator=g)
    hist[:2] = 0
    hist[0, 0] = 5  # the target in the history stays rankable
    for history in (None, hist):
        scores = (h @ table.T).float()
        scores[:, 0] = float("-inf")
        if history is not None:
            mask_history_(scores, history, keep=target)
        # the definition: items scoring higher, or the same with a lower id
        s_t = scores.gather(1, target[:, None])
        idx = torch.arange(n_items)[None]
        want = ((scores > s_t) | ((scores == s_t) & (idx < target[:, None]))).sum(1)
        exact = topk_ranks(h, table, None, target, n_items, chunk, history)  # K = the whole catalog
        assert torch.equal(exact, want)
        assert exact[0] + 1 == exact[1]  # items 5 and 17 tie: 5 is just ahead of 17
        ranks = topk_ranks(h, table, None, target, 10, chunk, history)
        assert torch.equal(ranks.clamp(max=10), want.clamp(max=10))
    # Random float scores (no ties): the metrics equal RecBole's whole-matrix topk, row for row.
    h, table = torch.randn(b, 16, generator=g), torch.randn(n_items, 16, generator=g)
    scores = h @ table.T
    whole, parts = (MetricAccumulator(["ndcg", "hit", "mrr"], [5, 10]) for _ in range(2))
    whole.update(scores.clone(), target)
    parts.update_ranks(topk_ranks(h, table, None, target, 10, max(chunk, 64)))
    assert torch.equal(whole.ranks(), parts.ranks())
