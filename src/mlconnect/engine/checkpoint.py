"""Checkpoints: atomic writes of plain state, loaded with ``weights_only=True``.

A checkpoint holds only tensors and plain Python values (dicts, lists, numbers, strings), so
loading it never unpickles arbitrary objects. Writes go to a temp file in the same folder,
are fsynced, then renamed over the old file: a kill mid-save leaves the previous one intact.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from mlconnect.errors import ExperimentError
from mlconnect.fileio import replacing


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by an earlier kill mid-save
        stale.unlink(missing_ok=True)
    # Serialised in memory first: torch.save into a full disk raises a RuntimeError about stream
    # positions, not the OSError; written this way a full disk is one WriteError line, and the
    # previous checkpoint stays as it was.
    buf = io.BytesIO()
    torch.save(state, buf)
    with replacing(path) as f:
        f.write(buf.getbuffer())


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
