"""Experiment folders as rows: status.json + progress.json + results/metrics.json + gpu_usage.csv.

One function per question ``ps`` and ``status`` ask, reading only the small JSON files (never the
checkpoints), so listing fifty experiments over ssh stays a few milliseconds on the host.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from mlconnect.errors import ExperimentError
from mlconnect.expstate import parse_iso, state_of
from mlconnect.fileio import read_json_object
from mlconnect.layout import EXPERIMENTS_DIR, ExperimentPaths, check_experiment_name, experiment_paths
from mlconnect.runs.gpu import last_utilization
from mlconnect.runs.launcher import reconcile

ROW_FIELDS = ("name", "state", "epoch", "epochs", "best_metric", "best_value", "gpu_util",
              "started", "age_s", "pid", "exit_code", "reason")


def experiments_dir(root: str | os.PathLike[str] = ".") -> Path:
    return Path(root) / EXPERIMENTS_DIR


def find_experiment(name: str, root: str | os.PathLike[str] = ".") -> ExperimentPaths:
    """The folder of experiment ``name``; a one-line error naming the ones there are."""
    paths = experiment_paths(check_experiment_name(name), base=experiments_dir(root))
    if not paths.root.is_dir():
        known = [p.name for p in _experiment_dirs(root)][:8]
        hint = f"experiments here: {', '.join(known)}" if known else "no experiments here yet"
        raise ExperimentError(f"unknown experiment {name!r} in {paths.root.parent.resolve()}",
                              f"{hint} (see `mlconnect ps`)")
    return paths


def _experiment_dirs(root: str | os.PathLike[str]) -> list[Path]:
    base = experiments_dir(root)
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def experiment_row(paths: ExperimentPaths) -> dict:
    """One ``ps`` row: name, state, epoch, best metric, GPU utilisation, age (plus pid, exit code)."""
    status = reconcile(paths) or {}
    progress = read_json_object(paths.progress) or {}
    results = read_json_object(paths.results) or {}
    verdict = state_of(status, progress, results, paths.config.exists())
    state = verdict["state"]
    metric = progress.get("valid_metric") or results.get("valid_metric")
    best = progress.get("best_valid")
    if best is None and metric and isinstance(results.get("best_valid"), dict):
        best = results["best_valid"].get(metric)
    started = status.get("started") or status.get("created") or (read_json_object(paths.meta) or {}).get("started")
    t0 = parse_iso(started)
    if t0 is None:
        with_config = paths.config if paths.config.exists() else paths.root
        t0 = datetime.fromtimestamp(with_config.stat().st_mtime, tz=timezone.utc)
    return {
        "name": paths.name,
        "state": state,
        "epoch": progress.get("epoch"),
        "epochs": progress.get("epochs") or results.get("epochs"),
        "best_metric": metric,
        "best_value": best,
        "gpu_util": last_utilization(paths.gpu_usage) if state == "running" else None,
        "started": started,
        "age_s": round((datetime.now(timezone.utc) - t0).total_seconds(), 1),
        "pid": status.get("pid") if state in ("running", "queued") else None,
        "exit_code": status.get("exit_code"),
        "world_size": progress.get("world_size") or results.get("world_size"),  # hook: ddp
        "gpu_index": status.get("gpu_index"),  # hook: GPU-aware queue / sweeps (the GPU the run holds)
        "reason": verdict["reason"],
    }


def list_experiments(root: str | os.PathLike[str] = ".") -> list[dict]:
    """Every experiment under ``<root>/experiments``, oldest first."""
    rows = [experiment_row(ExperimentPaths(p)) for p in _experiment_dirs(root)]
    return sorted(rows, key=lambda r: -r["age_s"])


def experiment_detail(paths: ExperimentPaths) -> dict:
    """``ps`` row plus the raw status, progress and results documents."""
    row = experiment_row(paths)
    row["status"] = read_json_object(paths.status)
    row["progress"] = read_json_object(paths.progress)
    row["results"] = read_json_object(paths.results)
    return row
