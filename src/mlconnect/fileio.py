"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Temp file in the same directory, fsync, ``os.replace``, then fsync the directory so the rename
itself survives a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from mlconnect.errors import WriteError


def write_failed(path: str | os.PathLike[str], exc: OSError) -> WriteError:
    """One line for a failed write: the path, why, and the free space on that disk."""
    if isinstance(exc, WriteError):
        return exc
    free = None
    for d in (Path(path), *Path(path).parents):  # the nearest folder that exists
        with contextlib.suppress(OSError):
            if d.is_dir():
                free = shutil.disk_usage(d).free
                break
    return WriteError(str(path), exc.strerror or str(exc), free)


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Write ``path`` atomically through the yielded file: temp file, fsync, rename, fsync dir.

    Any OSError (a full disk above all) becomes one :class:`WriteError` line and leaves the old
    file, if any, untouched; the temp file is removed.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise write_failed(path, exc) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with replacing(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike[str], default: Any = None) -> Any:
    """Read a JSON file; ``default`` when it does not exist."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def read_json_object(path: str | os.PathLike[str]) -> dict | None:
    """A JSON object from ``path``; None when missing, unreadable or not an object. For run records
    (status/progress/results): one damaged file must not take down every listing of the host."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):  # ValueError: bad JSON and bad UTF-8 alike
        return None
    return doc if isinstance(doc, dict) else None


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not every platform lets us open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing): one read-modify-write at a time
    across processes. Where there is no fcntl (Windows without WSL) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
