"""The engine reproduces RecBole 1.2.1's own split of ml-100k, user by user."""

from __future__ import annotations

import json
from pathlib import Path

from mlconnect.engine.config import load_config
from mlconnect.engine.data import load_dataset, split_leave_one_out


def test_split_equals_recbole_for_every_user(datasets_dir: Path, recbole_fixtures: Path) -> None:
    fx = json.loads((recbole_fixtures / "ml-100k-split.json").read_text())
    max_len = fx["protocol"]["MAX_ITEM_LIST_LENGTH"]
    cfg = load_config(None, {"data_path": str(datasets_dir), "dataset": "ml-100k", "MAX_ITEM_LIST_LENGTH": max_len})
    ds = load_dataset(cfg)
    sp = split_leave_one_out(ds, cfg.max_len)
    assert ds.n_items == fx["n_items_with_padding"]
    assert ds.n_users == fx["n_users"] == len(fx["users"])
    valid_users, valid_x, _ = sp.eval_inputs("valid")
    test_users, test_x, _ = sp.eval_inputs("test")
    valid_rows = {int(u): row for u, row in zip(valid_users, valid_x)}
    test_rows = {int(u): row for u, row in zip(test_users, test_x)}
    raw = ds.item_ids
    for u in range(1, ds.n_users + 1):
        want = fx["users"][ds.user_ids[u]]
        train = [raw[i] for i in sp.train[u]]
        assert train == want["train"], ds.user_ids[u]
        assert raw[sp.valid_target[u]] == want["valid"]
        assert raw[sp.test_target[u]] == want["test"]
        assert [raw[i] for i in valid_rows[u] if i] == want["valid_prefix_tail"]
        assert [raw[i] for i in test_rows[u] if i] == (want["train"] + [want["valid"]])[-max_len:]
