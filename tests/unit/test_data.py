"""Atomic files: parsing, RecBole's filters, windows, and one clear error per kind of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlconnect.engine.config import load_config
from mlconnect.engine.data import load_dataset, split_leave_one_out, training_windows, window_index
from mlconnect.errors import ConfigError, DataError

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def write(tmp_path: Path, body: str, header: str = HEADER, name: str = "toy") -> Path:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    (d / f"{name}.inter").write_text(header + body)
    return tmp_path


def cfg_for(data_path: Path, name: str = "toy", **over):
    return load_config(None, {"data_path": str(data_path), "dataset": name, **over})


def rows(spec: list[tuple[str, str, float, float]]) -> str:
    return "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in spec)


def test_sequences_follow_time_with_ties_in_file_order(tmp_path: Path) -> None:
    body = rows([("u1", "a", 5, 30), ("u1", "b", 5, 10), ("u2", "a", 3, 5), ("u1", "c", 4, 10), ("u1", "d", 1, 40)])
    ds = load_dataset(cfg_for(write(tmp_path, body)))
    u1 = ds.user_ids.index("u1")
    assert [ds.item_ids[i] for i in ds.sequences[u1]] == ["b", "c", "a", "d"]
    assert ds.item_ids[0] == "[PAD]" and ds.item_ids[1:] == ["a", "b", "c", "d"]  # first appearance


def test_filters_val_interval_counts_and_duplicates(tmp_path: Path) -> None:
    spec = [("u1", "a", 5, 1), ("u1", "a", 4, 2), ("u1", "b", 5, 3), ("u1", "c", 2, 4), ("u1", "d", 5, 5),
            ("u2", "a", 5, 1), ("u2", "b", 5, 2), ("u3", "z", 5, 1)]
    data = write(tmp_path, rows(spec))
    ds = load_dataset(cfg_for(data, rm_dup_inter="first", val_interval={"rating": "[3,inf)"},
                              user_inter_num_interval="[2,inf)", item_inter_num_interval="[2,inf)"))
    seqs = {ds.user_ids[u]: [ds.item_ids[i] for i in s] for u, s in enumerate(ds.sequences) if u}
    # c is filtered by rating; d and z appear once and go; u3 is then empty and goes too.
    assert seqs == {"u1": ["a", "b"], "u2": ["a", "b"]}
    last = load_dataset(cfg_for(data, rm_dup_inter="last"))
    u1 = last.user_ids.index("u1")
    assert [last.item_ids[i] for i in last.sequences[u1]] == ["a", "b", "c", "d"]


def test_windows_make_every_training_interaction_a_target_once() -> None:
    rng = np.random.default_rng(0)
    train = [np.empty(0, np.int64), np.array([5]), *[rng.integers(1, 100, size=n) for n in (2, 7, 50, 51, 130, 301)]]
    for stride in (None, 10, 25):
        x, y = training_windows(train, 20, stride)
        assert x.shape == y.shape and x.shape[1] == 20
        assert int((y > 0).sum()) == sum(max(len(t) - 1, 0) for t in train)
    x, y = training_windows([np.arange(1, 8)], 20)
    assert x[0, :6].tolist() == list(range(1, 7)) and y[0, :6].tolist() == list(range(2, 8)) and not x[0, 6:].any()


def test_window_index_gathers_the_same_windows_per_batch() -> None:
    rng = np.random.default_rng(1)
    train = [np.empty(0, np.int64), *[rng.integers(1, 100, size=n) for n in (1, 2, 7, 50, 51, 130)]]
    for stride in (None, 10):
        x, y = training_windows(train, 20, stride)
        w = window_index(train, 20, stride)
        assert len(w) == len(x) and w.rows.dtype == w.ends.dtype == np.int32
        pick = rng.permutation(len(w))[:5]
        bx, by = w.batch(pick)
        assert np.array_equal(bx, x[pick]) and np.array_equal(by, y[pick])
        assert w.tokens().tolist() == (y > 0).sum(1).tolist()


def test_overlapping_windows_give_every_target_long_context() -> None:
    seq = np.arange(1, 101)  # targets 2..100; with max_len 20, stride 5 each sees >= 16 earlier items
    x, y = training_windows([seq], 20, 5)
    for xr, yr in zip(x, y):
        for j in np.flatnonzero(yr):
            assert yr[j] == xr[j] + 1  # the target follows its input
            if yr[j] > 21:
                assert j + 1 >= 16


def test_split_gives_short_histories_recboles_rows(tmp_path: Path) -> None:
    """RecBole keeps min(2, rows - 1) of a user's n - 1 augmented rows for evaluation: 4 interactions give
    valid and test, 3 a test row only (its input: the first two), 2 a training row only."""
    body = rows([("u1", "a", 1, 1), ("u1", "b", 1, 2), ("u1", "c", 1, 3), ("u1", "d", 1, 4),
                 ("u2", "a", 1, 1), ("u2", "b", 1, 2), ("u2", "c", 1, 3),
                 ("u3", "a", 1, 1), ("u3", "b", 1, 2)])
    ds = load_dataset(cfg_for(write(tmp_path, body)))
    sp = split_leave_one_out(ds, 50)
    item = {c: ds.item_ids.index(c) for c in "abcd"}
    users, x, target = sp.eval_inputs("test")
    assert [ds.user_ids[u] for u in users] == ["u1", "u2"]
    assert x[0, :4].tolist() == [item[c] for c in "abc"] + [0] and target[0] == item["d"]
    assert x[1, :3].tolist() == [item["a"], item["b"], 0] and target[1] == item["c"]
    v_users, vx, v_target = sp.eval_inputs("valid")
    assert [ds.user_ids[u] for u in v_users] == ["u1"]
    assert vx[0, :3].tolist() == [item["a"], item["b"], 0] and v_target[0] == item["c"]
    train = {ds.user_ids[u]: [ds.item_ids[i] for i in sp.train[u]] for u in range(1, ds.n_users + 1)}
    assert train == {"u1": ["a", "b"], "u2": ["a", "b"], "u3": ["a", "b"]}


@pytest.mark.parametrize("header,body,needle", [
    ("user_id\titem_id:token\ttimestamp:float\n", "1\t2\t3\n", "has no type"),
    ("user_id:token\titem_id:token\ttimestamp:float\n", "1\t2\t3\n4\t5\n", "line 3: expected 3 columns, found 2"),
    ("user_id:token\titem_id:token\ttimestamp:float\n", "1\t2\t3\n1\t5\tyesterday\n", "line 3, column 'timestamp'"),
    ("", "", "empty"),
    ("user_id:token\titem_id:token\ttimestamp:float\n", "", "no rows"),
    ("user_id:token\titem_id:tokn\ttimestamp:float\n", "1\t2\t3\n", "unknown type 'tokn'"),
])
def test_bad_files_name_file_line_and_column(tmp_path: Path, header: str, body: str, needle: str) -> None:
    data = write(tmp_path, body, header=header)
    with pytest.raises(DataError) as err:
        load_dataset(cfg_for(data, load_col=None))
    assert needle in str(err.value)
    assert "toy.inter" in str(err.value)


def test_unknown_load_col_field(tmp_path: Path) -> None:
    data = write(tmp_path, rows([("u1", "a", 1, 1)]))
    with pytest.raises(DataError, match="'genre'.*it has: user_id, item_id, rating, timestamp"):
        load_dataset(cfg_for(data, load_col={"inter": ["user_id", "item_id", "timestamp", "genre"]}))
    with pytest.raises(ConfigError, match="timestamp"):
        load_dataset(cfg_for(data, load_col={"inter": ["user_id", "item_id"]}))


def test_missing_dataset_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as err:
        load_dataset(cfg_for(tmp_path, name="nope"))
    assert "import-movielens" in err.value.hint


def test_cli_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    data = write(tmp_path, "1\t2\t3\tnot-a-time\n")
    proc = subprocess.run([sys.executable, "-m", "mlconnect", "train", "--data-path", str(data), "--dataset", "toy",
                           "--experiment", "exp"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "line 2, column 'timestamp'" in lines[0]
    assert "Traceback" not in proc.stderr


def test_bom_and_crlf_in_atomic_files(tmp_path: Path) -> None:
    d = tmp_path / "toy"
    d.mkdir()
    (d / "toy.inter").write_bytes(b"\xef\xbb\xbf" + (HEADER + rows([("u1", "a", 1, 2), ("u1", "b", 1, 1)]))
                                  .replace("\n", "\r\n").encode())
    ds = load_dataset(cfg_for(tmp_path))
    assert ds.user_ids == ["[PAD]", "u1"] and [ds.item_ids[i] for i in ds.sequences[1]] == ["b", "a"]


def test_a_log_in_global_time_order_groups_by_user_and_keeps_ties_in_file_order(tmp_path: Path) -> None:
    body = rows([("u1", "a", 1, 1), ("u2", "b", 1, 2), ("u1", "c", 1, 3), ("u2", "d", 1, 3), ("u1", "e", 1, 3)])
    ds = load_dataset(cfg_for(write(tmp_path, body)))
    seqs = {ds.user_ids[u]: [ds.item_ids[i] for i in ds.sequences[u]] for u in (1, 2)}
    assert seqs == {"u1": ["a", "c", "e"], "u2": ["b", "d"]}
