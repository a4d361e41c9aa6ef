"""The streamed reader of the loader: block by block into NumPy, per-block dictionaries merged into one.

Tiny blocks and a tiny merge threshold force many blocks, several merges and a grown buffer on a
small file; the decoded values must be the file's, row for row, and a bad row still gets its line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlconnect.data import atomic
from mlconnect.data.atomic import read_atomic_columns
from mlconnect.errors import DataError


def _write(path: Path, users: list[str], items: list[str], times: list[float]) -> None:
    body = "".join(f"{u}\t{i}\t{t!r}\t1\n" for u, i, t in zip(users, items, times, strict=True))
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\trating:float\n" + body)


@pytest.mark.parametrize("block,merge", [(1 << 20, 1 << 20), (300, 40), (300, 7)], ids=["one-block", "merges", "often"])
def test_streamed_columns_decode_to_the_file_row_for_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          block: int, merge: int) -> None:
    monkeypatch.setattr(atomic, "STREAM_BLOCK", block)
    monkeypatch.setattr(atomic, "MERGE_ENTRIES", merge)
    rng = np.random.default_rng(0)
    n = 2_000
    # long ids first: the first block has few rows, so the capacity guess is short and must grow
    users = [("u" * 40 + str(k)) if k < 20 else f"u{rng.integers(0, 150)}" for k in range(n)]
    items = [f"i{rng.integers(0, 400)}" for _ in range(n)]
    times = [float(t) for t in rng.integers(0, 10**9, size=n)]
    path = tmp_path / "x.inter"
    _write(path, users, items, times)
    got = read_atomic_columns(path, ["user_id", "item_id", "timestamp", "rating"], ["user_id", "item_id", "timestamp"],
                              dictionary=("user_id", "item_id"))
    assert set(got.arrays) == {"user_id", "item_id", "timestamp"}
    for col, want in (("user_id", users), ("item_id", items)):
        d = got.dictionaries[col].to_pylist()
        assert len(d) == len(set(d)) == len(set(want))  # every distinct value exactly once
        assert [d[c] for c in got.arrays[col]] == want
    assert got.arrays["timestamp"].tolist() == times


def test_a_bad_row_in_a_later_block_names_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "STREAM_BLOCK", 200)
    path = tmp_path / "x.inter"
    _write(path, ["a"] * 100, ["b"] * 100, [1.0] * 100)
    text = path.read_text().splitlines()
    text[90] = "a\tb\tnot-a-time\t1"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match="line 91, column 'timestamp'"):
        read_atomic_columns(path, None, ["user_id", "timestamp"], dictionary=("user_id",))
