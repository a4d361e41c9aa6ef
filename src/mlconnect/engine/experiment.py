"""The experiment folder as the engine writes it: config, meta, vocab, progress (see layout.py)."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from mlconnect import __version__
from mlconnect.engine.config import Config, load_config, parse_overrides
from mlconnect.engine.data import Dataset
from mlconnect.errors import ExperimentError, MlconnectError, WriteError
from mlconnect.expstate import now_iso, this_process
from mlconnect.fileio import atomic_write_json, atomic_write_text, read_json, replacing
from mlconnect.layout import ExperimentPaths, experiment_paths, remove_experiment


def is_fresh(paths: ExperimentPaths) -> bool:
    """Created by ``exp create`` (config only) but never trained."""
    return paths.config.is_file() and not paths.progress.exists() and not paths.checkpoints.exists()


def prepare_experiment(cfg: Config, root: str | Path, *, resume: bool, force: bool) -> ExperimentPaths:
    """Make the folder; refuse to overwrite an existing experiment without --resume or --force.

    ``--resume`` of a run that never reached its first checkpoint starts it from scratch (and
    says so): there is nothing to lose, and no other flag would do better.
    """
    paths = ExperimentPaths(Path(root))
    exists = paths.root.exists() and any(paths.root.iterdir())
    if exists and (resume or force):
        refuse_if_training(paths)  # --force would delete, and --resume duplicate, a live trainer's files
    if resume and paths.checkpoint("last").is_file():
        check_resume_config(paths, cfg)  # before config.yaml is rewritten: a refused resume changes nothing
    if resume and not paths.checkpoint("last").is_file():
        note = (f"experiment {paths.name} has no checkpoint yet ({paths.checkpoint('last')}): "
                "starting it from scratch")
        print(f"note: {note}", file=sys.stderr, flush=True)
        if paths.root.is_dir():
            with contextlib.suppress(OSError), open(paths.log, "a", encoding="utf-8") as f:
                f.write(f"{datetime.now():%Y-%m-%d %H:%M:%S} {note}\n")
    elif not resume and exists and not is_fresh(paths):
        if not force:
            raise ExperimentError(f"experiment {paths.name} already exists ({paths.root})",
                                  "pass --resume to continue it, --force to overwrite it, or choose another name")
        remove_experiment(paths.root)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.tensorboard.mkdir(exist_ok=True)
    paths.checkpoints.mkdir(exist_ok=True)
    atomic_write_text(paths.config, cfg.to_yaml())
    return paths


def refuse_if_training(paths: ExperimentPaths) -> None:
    """One line if a live process (this machine) is training into ``paths`` (its progress.json says so)."""
    from mlconnect.expstate import snapshot, state_of

    progress = snapshot(str(paths.root), 0)["progress"] or {}
    here = progress.get("pid") and progress.get("host") == socket.gethostname()  # else: a copy, or no writer named
    if here and state_of(None, progress, None)["state"] == "running":
        raise ExperimentError(f"experiment {paths.name} is being trained right now (pid {progress.get('pid')})",
                              f"stop it first (`mlconnect stop {paths.name}`), or choose another name")


# What a resumed run may change: how long and where it runs, how it reports. Anything else (the model's
# shape, the data, the optimiser) would not match the checkpoint, or not continue the same run.
RESUMABLE_CHANGES = frozenset({
    "epochs", "stopping_step", "eval_step", "device", "enable_amp", "compile", "num_threads", "data_path",
    "eval_batch_size", "eval_chunk_size", "loss_chunk_size", "progress_interval_s", "log_interval",
    "save_checkpoints", "mlflow_tracking_uri", "mlflow_experiment"})


def check_resume_config(paths: ExperimentPaths, cfg: Config) -> None:
    """Refuse a resume whose config differs from the experiment's own outside RESUMABLE_CHANGES."""
    import yaml

    from mlconnect.yamlload import load_yaml

    try:
        saved = load_yaml(paths.config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return  # no readable saved config: the checkpoint's own model check still applies
    if not isinstance(saved, dict):
        return
    new = load_yaml(cfg.to_yaml())
    changed = [k for k in new if k not in RESUMABLE_CHANGES and k in saved and saved[k] != new[k]]
    if changed:
        what = ", ".join(f"{k} {saved[k]!r} -> {new[k]!r}" for k in changed[:3])
        raise ExperimentError(
            f"cannot resume {paths.name} with a changed config ({what}{', ...' if len(changed) > 3 else ''})",
            "resume without those changes (epochs, stopping_step, device and other run settings may change), "
            "or train a new experiment")


def create_experiment(cfg: Config, root: str | Path, force: bool = False) -> ExperimentPaths:
    """``mlconnect exp create``: write the resolved config without training."""
    paths = ExperimentPaths(Path(root))
    if paths.root.exists() and any(paths.root.iterdir()):
        if not force:
            raise ExperimentError(f"experiment {paths.name} already exists ({paths.root})",
                                  "choose another name or pass --force")
        remove_experiment(paths.root)
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
    with replacing(paths.checkpoints / "histories.npz") as f:  # a full disk: one WriteError line
        np.savez_compressed(f, items=flat, lengths=lengths)
    if ds.item_features:
        atomic_write_json(paths.checkpoints / "items.json", ds.item_features)


def record_failure(paths: ExperimentPaths, exc: BaseException, log: Callable[[str], None] | None = None,
                   state: str = "failed") -> None:
    """training.log and progress.json say why the run failed (best-effort: the disk may be full).
    ``state`` is the word recorded: ``failed``, or ``pruned`` for a sweep trial that was stopped early.

    A failed write also gets the advice that fits it: free space, then resume from the last good
    checkpoint (which the atomic writes left intact).
    """
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return
    if isinstance(exc, WriteError):
        exc.hint = (f"free some space there, then `{resume_command(paths.name)}` continues from the "
                    "last good checkpoint")
    why = str(exc) if isinstance(exc, MlconnectError) else f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(OSError):
        if log is not None:
            log(f"{state}: {why}")
        else:
            with open(paths.log, "a", encoding="utf-8") as f:
                f.write(f"{datetime.now():%Y-%m-%d %H:%M:%S} {state}: {why}\n")
    with contextlib.suppress(OSError, ValueError):
        progress = read_json(paths.progress, {}) or {}
        progress.update(state=state, error=why, updated=now_iso())
        atomic_write_json(paths.progress, progress)


def resume_command(name: str) -> str:
    """How to continue this run: the runs layer says how when it started us (``--host`` included),
    otherwise the foreground command."""
    return os.environ.get("MLCONNECT_RESUME_COMMAND") or f"mlconnect train --experiment {name} --resume"


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
        # Who writes it: a reader finding "running" from a process that is gone says "lost".
        self._writer = {**this_process(), "started": now_iso()}

    def write(self, data: dict[str, Any], force: bool = False) -> None:
        t = time.monotonic()
        if force or t - self._last >= self.interval:
            atomic_write_json(self.path, {**data, **self._writer, "updated": now_iso()})
            self._last = t


def run_config(config: Path | None, experiment: str | None, *, model: str | None = None,
               dataset: str | None = None, data_path: str | None = None, sets: list[str] | None = None,
               device: str | None = None) -> Config:
    """The config a run of ``train`` uses: the file (or, with none, the experiment's own saved config),
    then the command-line options and ``--set key=value`` overrides, then mlconnect.toml's data_path."""
    overrides = parse_overrides(list(sets or []))
    for key, value in (("model", model), ("dataset", dataset), ("data_path", data_path), ("device", device)):
        if value is not None:
            overrides[key] = value
    if config is None and experiment:
        # --resume, and a run of an experiment made by `exp create`, use the experiment's own config
        saved = experiment_paths(experiment).config
        if saved.is_file():
            config = saved
    if "data_path" not in overrides:
        from mlconnect.settings import project_data_path

        overrides.update(project_data_path(config))
    return load_config(config, overrides)
