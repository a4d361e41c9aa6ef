"""deploy.topk.ItemTopK: integer candidates plus exact rescoring give the exact top-k.

The reference is a full sort of the float32 scores (numpy's matmul), so the only slack is the
summation order (~1e-6); the ids must be those of the sorted scores. The candidate graph runs in ONNX
Runtime exactly as in a bundle (built in memory here).
"""

from __future__ import annotations

import numpy as np
import pytest

from mlconnect.deploy.topk import GROUP, ItemTopK, best_first, quantize_items


def _reference(users: np.ndarray, table: np.ndarray, bias: np.ndarray | None, seen: np.ndarray) -> np.ndarray:
    full = users @ table.T + (0 if bias is None else bias)
    full[:, 0] = -np.inf
    np.put_along_axis(full, seen, -np.inf, axis=1)
    return full


def _with_bias_input(users: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """The encoder graph's output: a trailing 1 when the model has an output bias."""
    return users if bias is None else np.concatenate([users, np.ones((len(users), 1), np.float32)], axis=1)


def _check(got: tuple[np.ndarray, np.ndarray], full: np.ndarray, seen: np.ndarray, k: int, n_items: int) -> None:
    got_s, got_i = got
    want = -np.sort(-full, axis=1)[:, :k]
    assert got_s.shape == got_i.shape == (len(full), k)
    np.testing.assert_allclose(got_s, want, rtol=1e-6, atol=1e-4)
    finite = np.isfinite(got_s)
    np.testing.assert_allclose(np.take_along_axis(full, got_i, 1)[finite], got_s[finite], rtol=1e-6, atol=1e-4)
    assert (np.diff(np.where(finite, got_s, -1e30), axis=1) <= 0).all()  # best first
    for row, s in zip(np.where(finite, got_i, -1).tolist(), seen.tolist()):
        ranked = [i for i in row if i >= 0]
        assert len(set(ranked)) == len(ranked)  # no item twice
        assert not set(ranked) & (set(s) | {0}) and max(ranked, default=0) < n_items  # never seen/padding/tail


@pytest.mark.parametrize(("n_items", "bias", "k", "block"), [
    (5_003, False, 50, 40),    # many groups; an item count that is not a whole number of groups
    (5_003, True, 7, 64),      # bias as one more input dimension
    (300, True, 25, 40),       # 10 groups < k: every rankable item is a candidate
    (GROUP * 3, False, 3, 7),  # exactly whole groups, k == G
])
def test_candidates_then_exact_scores_equal_a_full_sort(n_items: int, bias: bool, k: int, block: int) -> None:
    rng = np.random.default_rng(n_items + k)
    table = rng.standard_normal((n_items, 16), dtype=np.float32)
    b = rng.standard_normal(n_items, dtype=np.float32) if bias else None
    users = rng.standard_normal((301, 16), dtype=np.float32)
    seen = rng.integers(0, n_items, (301, 9))
    seen[:5] = 0  # padding-only rows
    # A planted winner per user: it must come first wherever it is not seen.
    users[:, 0] += 10.0
    table[n_items // 2, 0] = 5.0
    scorer = ItemTopK.from_table(table, b)
    scorer.block = block  # several blocks, the last one short
    got = scorer.topk(_with_bias_input(users, b), seen, k)
    _check(got, _reference(users, table, b, seen), seen, k, n_items)
    assert (got[1][5:, 0] == n_items // 2).sum() > 250


def test_near_ties_and_a_coarse_scale_still_give_the_exact_order() -> None:
    """The worst case for the integer pass: one huge entry makes the 8-bit scale coarse, and thousands of
    items score within rounding of each other; the margin must keep every true top-k item."""
    rng = np.random.default_rng(7)
    n_items, k = 20_000, 50
    base = rng.standard_normal(16).astype(np.float32)
    table = base + rng.standard_normal((n_items, 16)).astype(np.float32) * 1e-3  # near-identical items
    table[123, 3] = 300.0  # the outlier that sets the scale
    users = rng.standard_normal((64, 16)).astype(np.float32)
    seen = rng.integers(0, n_items, (64, 30))
    scorer = ItemTopK.from_table(table)
    _, scale = quantize_items(scorer.rows)
    assert scale > 2.0  # the integers cannot tell most items apart: rescoring decides
    got = scorer.topk(users, seen, k)
    _check(got, _reference(users, table, None, seen), seen, k, n_items)


def test_a_zero_user_vector_and_whole_histories_seen() -> None:
    """Every item ties (all candidates), and a user who has seen all but two items gets two, then -inf."""
    rng = np.random.default_rng(3)
    n_items = 700
    table = rng.standard_normal((n_items, 8)).astype(np.float32)
    users = rng.standard_normal((3, 8)).astype(np.float32)
    users[0] = 0.0
    seen = np.zeros((3, n_items - 3), dtype=np.int64)
    seen[1] = np.arange(1, n_items - 2)  # items 1 .. n-3 seen: n-2 and n-1 left
    got_s, got_i = ItemTopK.from_table(table).topk(users, seen, 40)
    assert (got_s[0] == 0).all() and got_i[0].tolist() == list(range(1, 41))  # ties: lower ids first
    assert sorted(got_i[1, :2].tolist()) == [n_items - 2, n_items - 1] and np.isneginf(got_s[1, 2:]).all()
    assert (got_i[1, 2:] == 0).all()
    _check((got_s[2:], got_i[2:]), _reference(users[2:], table, None, seen[2:]), seen[2:], 40, n_items)


def test_rows_with_fewer_rankable_items_than_k_end_in_minus_inf() -> None:
    table = np.eye(4, dtype=np.float32)
    scores, ids = ItemTopK.from_table(table).topk(np.ones((2, 4), np.float32), np.array([[1, 2], [0, 0]]), 3)
    assert np.isneginf(scores[0, 1:]).all() and ids[0, 0] == 3  # items 1, 2 seen; 0 is padding
    assert np.isfinite(scores[1]).all() and set(ids[1].tolist()) == {1, 2, 3}


def test_a_long_seen_list_is_ranked_out_too() -> None:
    """More than 64 seen items per row take the other exclusion check (a read of the integer scores)."""
    rng = np.random.default_rng(11)
    n_items = 3_000
    table = rng.standard_normal((n_items, 12)).astype(np.float32)
    users = rng.standard_normal((40, 12)).astype(np.float32)
    full = users @ table.T
    seen = np.argsort(-full, axis=1)[:, :150]  # each user's 150 best items, all seen
    seen[:3, 100:] = 0
    got = ItemTopK.from_table(table).topk(users, seen, 30)
    _check(got, _reference(users, table, None, seen), seen, 30, n_items)


def test_best_first_is_the_stable_sort_under_heavy_ties() -> None:
    rng = np.random.default_rng(5)
    for _ in range(500):
        n, w = rng.integers(1, 6), rng.integers(1, 30)
        k = int(rng.integers(1, w + 1))
        s = rng.integers(-3, 4, (n, w)).astype(np.float32)  # few distinct values: ties everywhere
        s[rng.random((n, w)) < 0.2] = -np.inf
        assert np.array_equal(best_first(s, k), np.argsort(-s, axis=1, kind="stable")[:, :k])
