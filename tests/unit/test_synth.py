"""Synthetic data: deterministic, RecBole-formatted, heavy-tailed, and with a sequential signal."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from mlconnect.data.synth import INTER_HEADER, MIN_LEN, format_int_rows, generate
from mlconnect.errors import MlconnectError, UsageError

SMALL = dict(n_users=400, n_items=300, n_interactions=30_000)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _load(folder, name):
    lines = (folder / f"{name}.inter").read_text().splitlines()
    assert lines[0] + "\n" == INTER_HEADER
    rows = np.array([[float(x) for x in line.split("\t")] for line in lines[1:]])
    return rows


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return generate(out, "toy", seed=7, **SMALL)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, small):
    again = generate(tmp_path, "toy", seed=7, **SMALL)
    assert _digest(again) == _digest(small)
    other = generate(tmp_path, "other", seed=8, **SMALL)
    assert _digest(other)["other.inter"] != _digest(small)["toy.inter"]


def test_atomic_files_parse(small):
    assert sorted(p.name for p in small.iterdir()) == ["toy.inter", "toy.item"]
    rows = _load(small, "toy")
    assert rows.shape == (SMALL["n_interactions"], 4)
    users, items, ratings, ts = rows.T
    assert set(np.unique(users)) == set(range(1, SMALL["n_users"] + 1))
    assert items.min() >= 1 and items.max() <= SMALL["n_items"]
    assert set(np.unique(ratings)) <= {1, 2, 3, 4, 5}
    lengths = np.bincount(users.astype(int))[1:]
    assert lengths.min() >= MIN_LEN
    # skewed lengths: the mean is well above the median, the longest far above both
    assert lengths.mean() > 1.2 * np.median(lengths) and lengths.max() > 4 * lengths.mean()
    same_user = users[1:] == users[:-1]
    assert (ts[1:][same_user] > ts[:-1][same_user]).all()
    item_lines = (small / "toy.item").read_text().splitlines()
    assert item_lines[0] == "item_id:token\ttitle:token_seq\tcluster:token"
    assert len(item_lines) == SMALL["n_items"] + 1
    assert all(len(line.split("\t")) == 3 for line in item_lines)


def test_popularity_is_heavy_tailed(small):
    items = _load(small, "toy")[:, 1].astype(int)
    counts = np.sort(np.bincount(items, minlength=SMALL["n_items"] + 1)[1:])[::-1]
    share_top10 = counts[: len(counts) // 10].sum() / counts.sum()
    assert share_top10 > 0.4  # uniform popularity would give 0.1
    assert counts[0] > 20 * np.median(counts)


def test_sequential_signal_beats_popularity(small):
    rows = _load(small, "toy")
    users, items = rows[:, 0].astype(int), rows[:, 1].astype(int)
    last = np.r_[users[1:] != users[:-1], True]
    n = SMALL["n_items"] + 1
    train = ~last
    pop = np.bincount(items[train], minlength=n)
    pop[0] = 0
    top10 = np.argsort(-pop, kind="stable")[:10]
    target, prev = items[last], items[np.flatnonzero(last) - 1]
    pairs = np.flatnonzero(train[:-1] & train[1:] & (users[1:] == users[:-1]))
    trans = np.zeros((n, n))
    np.add.at(trans, (items[pairs], items[pairs + 1]), 1)
    score = trans[prev] + 1e-9 * pop  # first-order Markov, popularity breaks ties
    rank = (score > score[np.arange(len(target)), target][:, None]).sum(axis=1)
    markov_hit = (rank < 10).mean()
    pop_hit = np.isin(target, top10).mean()
    assert markov_hit > pop_hit + 0.25, (markov_hit, pop_hit)


def test_noise_one_removes_the_chain(tmp_path):
    folder = generate(tmp_path, "flat", seed=1, noise=1.0, **SMALL)
    rows = _load(folder, "flat")
    users, items = rows[:, 0].astype(int), rows[:, 1].astype(int)
    pairs = np.flatnonzero(users[1:] == users[:-1])
    n = SMALL["n_items"] + 1
    trans = np.zeros((n, n))
    np.add.at(trans, (items[pairs], items[pairs + 1]), 1)
    # with structure, a few successors dominate each row; without it, transitions spread out
    top4 = np.sort(trans, axis=1)[:, -4:].sum() / trans.sum()
    assert top4 < 0.5


def test_one_million_interactions(tmp_path):
    folder = generate(tmp_path, "big", n_users=10_000, n_items=20_000, n_interactions=1_000_000)
    with open(folder / "big.inter", "rb") as f:
        assert sum(1 for _ in f) == 1_000_001


def test_format_int_rows():
    cols = [np.array([0, 7, 10, 123456]), np.array([5, 0, 99, 1])]
    assert format_int_rows(cols) == b"0\t5\n7\t0\n10\t99\n123456\t1\n"


def test_bad_sizes_and_existing_folder(tmp_path):
    with pytest.raises(UsageError) as info:
        generate(tmp_path, "x", n_users=100, n_items=1, n_interactions=10)
    assert "items" in str(info.value) and "interactions" in str(info.value)
    generate(tmp_path, "x", n_users=5, n_items=5, n_interactions=25)
    before = _digest(tmp_path / "x")
    with pytest.raises(MlconnectError, match="already exists"):
        generate(tmp_path, "x", n_users=5, n_items=5, n_interactions=30)
    assert _digest(tmp_path / "x") == before
    generate(tmp_path, "x", n_users=5, n_items=5, n_interactions=30, overwrite=True)
    assert len((tmp_path / "x" / "x.inter").read_text().splitlines()) == 31
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no temp folders left behind


@pytest.mark.parametrize("name", ["", "..", ".hidden", "a/b"])
def test_bad_names(tmp_path, name):
    with pytest.raises(UsageError, match="bad dataset name"):
        generate(tmp_path, name, n_users=5, n_items=5, n_interactions=25)
    assert list(tmp_path.iterdir()) == []
