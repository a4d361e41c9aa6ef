"""bundle.pad_batch / pad_ragged (array indexing) against the per-history loop they replaced."""

from __future__ import annotations

import numpy as np
import pytest

from mlconnect.deploy.bundle import pad_batch, pad_ragged


def _loop(histories: list[list[int]], max_len: int, trim: bool, slot: int = 1) -> tuple[np.ndarray, np.ndarray]:
    longest = max((len(h) for h in histories), default=1)
    items = np.zeros((len(histories), min(max_len, max(1, longest + slot)) if trim else max_len), dtype=np.int64)
    seen = np.zeros((len(histories), max(1, longest)), dtype=np.int64)
    for row, h in enumerate(histories):
        tail = h[-max_len:]
        items[row, : len(tail)] = tail
        seen[row, : len(h)] = h
    return items, seen


@pytest.mark.parametrize(("trim", "slot"), [(False, 1), (True, 1), (True, 0)])
def test_pad_batch_equals_the_loop(trim: bool, slot: int) -> None:
    rng = np.random.default_rng(int(trim) + 2 * slot)
    cases = [[], [[]], [[], []], [[5]], [[1, 2, 3]] * 3]
    cases += [[list(rng.integers(1, 99, rng.integers(0, 15))) for _ in range(rng.integers(1, 7))] for _ in range(300)]
    for histories in cases:
        for max_len in (1, 3, 8, 20):
            got, want = pad_batch(histories, max_len, trim, slot), _loop(histories, max_len, trim, slot)
            for g, w in zip(got, want):
                assert g.dtype == np.int64 and g.shape == w.shape and np.array_equal(g, w), (histories, max_len)


def test_pad_ragged_picks_rows_out_of_a_flat_history_array() -> None:
    histories = [[4, 5, 6, 7], [], [9], [1, 2]]
    flat = np.array([i for h in histories for i in h], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(h) for h in histories])])
    rows = np.array([3, 0, 1])
    got = pad_ragged(flat, offsets, rows, max_len=3, trim=True)
    want = _loop([histories[r] for r in rows], 3, True)
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert got[0].tolist() == [[1, 2, 0], [5, 6, 7], [0, 0, 0]]  # the last max_len ids, right-padded
