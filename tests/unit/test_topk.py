"""deploy.topk.ItemTopK: the grouped selection is the exact top-k of the scores it computes.

The reference is a full sort of the same float32 scores (numpy's own matmul), so the only slack is the
summation order of two BLAS calls (~1e-6); the ids must be those of the sorted scores.
"""

from __future__ import annotations

import numpy as np
import pytest

from mlconnect.deploy.topk import GROUP, ItemTopK


@pytest.mark.parametrize(("n_items", "bias", "k", "workers"), [
    (5_003, False, 50, 1),    # many groups; an item count that is not a whole number of groups
    (5_003, True, 7, 2),      # bias folded into the matmul; blocks on two threads
    (300, True, 25, 1),       # 10 groups < k: every group is a candidate
    (GROUP * 3, False, 3, 1),  # exactly whole groups, k == G
])
def test_grouped_topk_equals_a_full_sort(n_items: int, bias: bool, k: int, workers: int) -> None:
    rng = np.random.default_rng(n_items + k)
    table = rng.standard_normal((n_items, 16), dtype=np.float32)
    b = rng.standard_normal(n_items, dtype=np.float32) if bias else None
    users = rng.standard_normal((301, 16), dtype=np.float32)
    seen = rng.integers(0, n_items, (301, 9))
    seen[:5] = 0  # padding-only rows
    # A planted winner per user in a group of its own makes the grouping matter: it must come first.
    users[:, 0] += 10.0
    table[n_items // 2, 0] = 5.0
    scorer = ItemTopK.from_table(table, b, workers=workers)
    scorer.block = 40  # several blocks, the last one short
    got_s, got_i = scorer.topk(users, seen, k)

    full = users @ table.T + (b if bias else 0)
    full[:, 0] = -np.inf
    np.put_along_axis(full, seen, -np.inf, axis=1)
    want = -np.sort(-full, axis=1)[:, :k]
    assert got_s.shape == got_i.shape == (301, k)
    np.testing.assert_allclose(got_s, want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.take_along_axis(full, got_i, 1), got_s, rtol=0, atol=1e-4)
    assert (np.diff(got_s, axis=1) <= 0).all()  # best first
    assert all(len(set(row)) == k for row in got_i.tolist())  # no item twice
    assert not np.isin(got_i, 0).any() and not (got_i >= n_items).any()  # never padding or the padded tail
    seen_hit = [set(r) & set(s) - {0} for r, s in zip(got_i.tolist(), seen.tolist())]
    assert not any(seen_hit)
    assert (got_i[5:, 0] == n_items // 2).sum() > 250  # the planted item wins wherever it is not seen


def test_rows_with_fewer_rankable_items_than_k_end_in_minus_inf() -> None:
    table = np.eye(4, dtype=np.float32)
    scores, ids = ItemTopK.from_table(table).topk(np.ones((2, 4), np.float32), np.array([[1, 2], [0, 0]]), 3)
    assert np.isneginf(scores[0, 1:]).all() and ids[0, 0] == 3  # items 1, 2 seen; 0 is padding
    assert np.isfinite(scores[1]).all() and set(ids[1].tolist()) == {1, 2, 3}
