"""The binary cache of a preprocessed dataset, next to the data: ``<dataset>/.mlconnect-cache/<key>/``.

Open formats only: ``items.npy`` (int32, every user's items in time order, one flat array),
``offsets.npy`` (int64, where each user starts), ``users.arrow`` / ``items.arrow`` (raw ids, Arrow
IPC) and ``features.arrow`` (the ``.item`` columns). Later loads memory-map them, so a run on an
unchanged dataset pays no parse at all.

The key hashes the source files' size and mtime and every preprocessing setting (``PrepKeys``).
A cache is written into a temporary folder and renamed into place only when complete
(``meta.json`` last), so a write killed half-way (kill -9, full disk) is never read: the next load
sees no folder under the key, rebuilds, and removes the dead writer's leftovers. A data folder
that is not writable (a shared, read-only copy) simply gets no cache. ``MLCONNECT_DATA_CACHE=0``
turns it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from mlconnect.data.prepared import Prepared, PrepKeys
from mlconnect.expstate import pid_exists
from mlconnect.fileio import fsync_dir

CACHE_DIR = ".mlconnect-cache"
FORMAT = 1
ENV_OFF = "MLCONNECT_DATA_CACHE"
# Tests only: seconds to sleep half-way through a cache write, so a test can kill -9 the writer there.
ENV_TEST_SLEEP = "MLCONNECT_TEST_CACHE_WRITE_SLEEP"


def source_stamp(ddir: Path, name: str) -> list[list[object]]:
    """(file, size, mtime_ns) of the files the dataset is built from; a missing file is stamped too."""
    stamp: list[list[object]] = []
    for suffix in (".inter", ".item"):
        try:
            st = (ddir / f"{name}{suffix}").stat()
            stamp.append([name + suffix, st.st_size, st.st_mtime_ns])
        except FileNotFoundError:
            stamp.append([name + suffix, None, None])
    return stamp


def cache_key(ddir: Path, name: str, keys: PrepKeys) -> tuple[str, str]:
    """(hash of the source files, hash of the settings): the cache folder is ``<src>-<keys>``."""
    src = hashlib.sha256(json.dumps([FORMAT, source_stamp(ddir, name)]).encode()).hexdigest()[:16]
    cfg = hashlib.sha256(json.dumps(keys.as_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]
    return src, cfg


def load_or_build(ddir: Path, name: str, keys: PrepKeys, build: Callable[[], Prepared]) -> tuple[Prepared, str]:
    """The cached dataset when there is a complete one for this key, else ``build()`` (and cache it).

    Returns the data and how it was obtained: ``"cached"``, ``"built"`` (and cached) or
    ``"built, not cached: <why>"``.
    """
    if os.environ.get(ENV_OFF, "1").strip().lower() in ("0", "off", "false", "no"):
        return build(), f"built, not cached: {ENV_OFF}=0"
    root = ddir / CACHE_DIR
    src, cfg = cache_key(ddir, name, keys)
    final = root / f"{src}-{cfg}"
    if (final / "meta.json").is_file():
        try:
            return read(final), "cached"
        except (OSError, ValueError, pa.ArrowException):
            shutil.rmtree(final, ignore_errors=True)  # unreadable (foreign edit, disk error): rebuild it
    prepared = build()
    if not _writable(ddir):
        return prepared, "built, not cached: the data folder is read-only"
    try:
        root.mkdir(exist_ok=True)
        _clean(root, src)
        write(prepared, root, final, {"format": FORMAT, "sources": source_stamp(ddir, name),
                                      "keys": keys.as_dict()})
    except OSError as exc:
        return prepared, f"built, not cached: {exc.strerror or exc}"
    return prepared, "built"


def _writable(folder: Path) -> bool:
    """Writable by its permission bits, not only by our uid: root may write anywhere, but a folder
    marked read-only (a shared reference copy) is not ours to add files to."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return bool(mode & stat.S_IWUSR) and os.access(folder, os.W_OK)


def _clean(root: Path, src: str) -> None:
    """Remove caches of older versions of the files, and temp folders whose writer has died."""
    for p in root.iterdir():
        if p.name.startswith(".tmp-"):
            pid = p.name.split("-")[1]
            if pid.isdigit() and not pid_exists(int(pid)):
                shutil.rmtree(p, ignore_errors=True)
        elif not p.name.startswith(src + "-"):
            shutil.rmtree(p, ignore_errors=True)


def _write_ipc(path: Path, arrays: dict[str, pa.Array] | pa.Table) -> None:
    table = arrays if isinstance(arrays, pa.Table) else pa.table(arrays)
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def write(p: Prepared, root: Path, final: Path, meta: dict[str, object]) -> None:
    """Write into ``root/.tmp-<pid>-...`` and rename to ``final`` when every file is on disk."""
    tmp = root / f".tmp-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        np.save(tmp / "items.npy", np.ascontiguousarray(p.items, dtype=np.int32))
        np.save(tmp / "offsets.npy", np.ascontiguousarray(p.offsets, dtype=np.int64))
        if os.environ.get(ENV_TEST_SLEEP):
            time.sleep(float(os.environ[ENV_TEST_SLEEP]))
        _write_ipc(tmp / "users.arrow", {"id": p.user_ids})
        _write_ipc(tmp / "items.arrow", {"id": p.item_ids})
        if p.features is not None:
            _write_ipc(tmp / "features.arrow", p.features)
        meta = {**meta, "feature_types": p.feature_types, "n_users": len(p.user_ids),
                "n_items": len(p.item_ids), "n_interactions": len(p.items)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():  # another process won the race: theirs is as good
                raise
        fsync_dir(root)
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                shutil.rmtree(tmp)


def _read_ipc(path: Path) -> pa.Table:
    return ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def read(folder: Path) -> Prepared:
    """Memory-map a complete cache folder."""
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"cache format {meta.get('format')}")
    features = _read_ipc(folder / "features.arrow") if (folder / "features.arrow").is_file() else None
    return Prepared(items=np.load(folder / "items.npy", mmap_mode="r"),
                    offsets=np.load(folder / "offsets.npy", mmap_mode="r"),
                    user_ids=_read_ipc(folder / "users.arrow").column("id").combine_chunks(),
                    item_ids=_read_ipc(folder / "items.arrow").column("id").combine_chunks(),
                    features=features, feature_types=meta.get("feature_types", {}))
