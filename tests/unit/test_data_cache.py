"""The binary cache: hit (memory-mapped), rebuilt on a touched file or a changed key, never read half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mlconnect.data.cache import CACHE_DIR, ENV_TEST_SLEEP
from mlconnect.data.synth import generate
from mlconnect.engine.config import load_config
from mlconnect.engine.data import load_dataset, split_leave_one_out


def _cfg(data: Path, **over: object):
    return load_config(None, {"data_path": str(data), "dataset": "s", **over})


def _same(a, b) -> None:
    assert a.user_ids == b.user_ids and a.item_ids == b.item_ids
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences))
    assert a.item_features == b.item_features


def _caches(data: Path) -> list[str]:
    return sorted(p.name for p in (data / "s" / CACHE_DIR).iterdir())


def test_hit_touch_and_key_change(tmp_path: Path) -> None:
    generate(tmp_path, "s", n_users=60, n_items=50, n_interactions=900, seed=1)
    first = load_dataset(_cfg(tmp_path))
    assert first.source == "built" and len(_caches(tmp_path)) == 1
    again = load_dataset(_cfg(tmp_path))
    assert again.source == "cached" and isinstance(again.sequences.flat, np.memmap)
    _same(first, again)
    sp, sp2 = split_leave_one_out(first, 20), split_leave_one_out(again, 20)
    assert np.array_equal(sp.test_target, sp2.test_target)

    inter = tmp_path / "s" / "s.inter"
    st = inter.stat()
    os.utime(inter, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched, same bytes
    touched = load_dataset(_cfg(tmp_path))
    assert touched.source == "built" and len(_caches(tmp_path)) == 1  # the stale cache is gone
    _same(first, touched)

    filtered = load_dataset(_cfg(tmp_path, user_inter_num_interval="[20,inf)"))
    assert filtered.source == "built" and filtered.n_users < first.n_users
    assert len(_caches(tmp_path)) == 2  # one per preprocessing key
    assert load_dataset(_cfg(tmp_path, user_inter_num_interval="[20,inf)")).source == "cached"


def test_kill_9_during_the_write_leaves_nothing_usable(tmp_path: Path) -> None:
    generate(tmp_path, "s", n_users=60, n_items=50, n_interactions=900, seed=2)
    code = ("from mlconnect.engine.config import load_config; from mlconnect.engine.data import load_dataset; "
            f"load_dataset(load_config(None, {{'data_path': {str(tmp_path)!r}, 'dataset': 's'}}))")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, ENV_TEST_SLEEP: "60"})
    root = tmp_path / "s" / CACHE_DIR
    deadline = time.monotonic() + 60
    while not list(root.glob(".tmp-*/items.npy")):  # the writer is inside the write, asleep
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert [p.name.startswith(".tmp-") for p in root.iterdir()] == [True]  # only the dead writer's temp folder
    ds = load_dataset(_cfg(tmp_path))
    assert ds.source == "built"  # the half-written cache was not used
    assert [p.name.startswith(".tmp-") for p in root.iterdir()] == [False]  # and its leftovers are gone
    cached = load_dataset(_cfg(tmp_path))
    assert cached.source == "cached"
    _same(ds, cached)


def test_a_read_only_data_folder_gets_no_cache(tmp_path: Path) -> None:
    generate(tmp_path, "s", n_users=20, n_items=30, n_interactions=200, seed=3)
    folder = tmp_path / "s"
    folder.chmod(0o555)  # read-only by its bits, which even root honours here
    try:
        ds = load_dataset(_cfg(tmp_path))
        assert ds.source == "built, not cached: the data folder is read-only"
        assert not (folder / CACHE_DIR).exists()
    finally:
        folder.chmod(0o755)
