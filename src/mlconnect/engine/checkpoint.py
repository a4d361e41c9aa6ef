"""Checkpoints: atomic writes of plain state, loaded with ``weights_only=True``.

A checkpoint holds only tensors and plain Python values (dicts, lists, numbers, strings), so
loading it never unpickles arbitrary objects. Writes go to a temp file in the same folder,
are fsynced, then renamed over the old file: a kill mid-save leaves the previous one intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from mlconnect.errors import ExperimentError
from mlconnect.fileio import fsync_dir


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by an earlier kill mid-save
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load weights-only; a missing or damaged file is an ExperimentError, not a traceback."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"no checkpoint at {path}", "train the experiment first, or check its name")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ExperimentError(f"cannot load checkpoint {path}: {str(exc).splitlines()[0]}",
                              "the file is damaged or not an mlconnect checkpoint; use the other "
                              "checkpoint (best/last) or retrain") from None
