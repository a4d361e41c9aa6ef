"""The experiment folder as the engine writes it: config, meta, vocab, progress (see layout.py)."""

from __future__ import annotations

import platform
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mlconnect import __version__
from mlconnect.engine.config import Config
from mlconnect.engine.data import Dataset
from mlconnect.errors import ExperimentError
from mlconnect.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from mlconnect.layout import ExperimentPaths


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def is_fresh(paths: ExperimentPaths) -> bool:
    """Created by ``exp create`` (config only) but never trained."""
    return paths.config.is_file() and not paths.progress.exists() and not paths.checkpoints.exists()


def prepare_experiment(cfg: Config, root: str | Path, *, resume: bool, force: bool) -> ExperimentPaths:
    """Make the folder; refuse to overwrite an existing experiment without --resume or --force."""
    paths = ExperimentPaths(Path(root))
    exists = paths.root.exists() and any(paths.root.iterdir())
    if resume:
        if not paths.checkpoint("last").is_file():
            raise ExperimentError(f"experiment {paths.name} has no checkpoint to resume from",
                                  f"start it without --resume (looked in {paths.checkpoints})")
    elif exists and not is_fresh(paths):
        if not force:
            raise ExperimentError(f"experiment {paths.name} already exists ({paths.root})",
                                  "pass --resume to continue it, --force to overwrite it, or choose another name")
        shutil.rmtree(paths.root)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.tensorboard.mkdir(exist_ok=True)
    paths.checkpoints.mkdir(exist_ok=True)
    atomic_write_text(paths.config, cfg.to_yaml())
    return paths


def create_experiment(cfg: Config, root: str | Path, force: bool = False) -> ExperimentPaths:
    """``mlconnect exp create``: write the resolved config without training."""
    paths = ExperimentPaths(Path(root))
    if paths.root.exists() and any(paths.root.iterdir()):
        if not force:
            raise ExperimentError(f"experiment {paths.name} already exists ({paths.root})",
                                  "choose another name or pass --force")
        shutil.rmtree(paths.root)
    paths.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths.config, cfg.to_yaml())
    return paths


def write_vocab(paths: ExperimentPaths, ds: Dataset) -> None:
    """Id maps and full user histories, so a pulled experiment can be served without the data."""
    atomic_write_json(paths.vocab, {"item_ids": ds.item_ids, "user_ids": ds.user_ids,
                                    "item_field": ds.item_field, "user_field": ds.user_field,
                                    "dataset": ds.name})
    lengths = np.array([len(s) for s in ds.sequences], dtype=np.int64)
    flat = np.concatenate(ds.sequences) if ds.n_interactions else np.zeros(0, dtype=np.int64)
    tmp = paths.checkpoints / "histories.tmp.npz"
    np.savez_compressed(tmp, items=flat, lengths=lengths)
    atomic_write_bytes(paths.checkpoints / "histories.npz", tmp.read_bytes())
    tmp.unlink()
    if ds.item_features:
        atomic_write_json(paths.checkpoints / "items.json", ds.item_features)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def write_meta(paths: ExperimentPaths, *, device: str, started: str, ended: str | None = None,
               state: str = "running") -> None:
    import torch

    meta = read_json(paths.meta, {}) or {}
    commit = _git("rev-parse", "HEAD")
    meta.update({
        "git_commit": commit,
        "git_dirty": bool(_git("status", "--porcelain")) if commit else None,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mlconnect": __version__,
        "device": device,
        "started": meta.get("started", started),
        "ended": ended,
        "state": state,
        "argv": sys.argv,
    })
    atomic_write_json(paths.meta, meta)


class ProgressFile:
    """Rewrites progress.json atomically, at most every ``interval`` seconds unless forced."""

    def __init__(self, paths: ExperimentPaths, interval: float) -> None:
        self.path = paths.progress
        self.interval = interval
        self._last = 0.0

    def write(self, data: dict[str, Any], force: bool = False) -> None:
        t = time.monotonic()
        if force or t - self._last >= self.interval:
            atomic_write_json(self.path, {**data, "updated": now_iso()})
            self._last = t
