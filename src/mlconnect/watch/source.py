"""Where monitor and ls read experiments from: a snapshot of one (here or over ssh), the local list."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from mlconnect.errors import ExperimentError
from mlconnect.layout import EXPERIMENTS_DIR, check_experiment_name


def read_snapshot(target, name: str, log_lines: int = 12) -> dict:
    """One snapshot of ``experiments/<name>`` on the target: a direct call locally, the host agent's
    ``snapshot`` verb over ssh (the same function there; its failures are the AgentError tree)."""
    from mlconnect.expstate import snapshot

    check_experiment_name(name)
    if target.is_local:
        return snapshot(str(Path(target.remote_root) / EXPERIMENTS_DIR / name), log_lines)
    return target.agent("snapshot", "--experiment", name, "--log-lines", str(log_lines), timeout=20)


def check_first_snapshot(snap: dict, name: str, where: str) -> None:
    if not snap.get("exists"):
        raise ExperimentError(f"unknown experiment {name!r}{where}",
                              "see `mlconnect ls` (local) or `mlconnect ps` (host)")
    bad = [p for p in snap.get("problems", []) if p.startswith(("progress.json", "status.json"))]
    if bad:
        raise ExperimentError(f"experiment {name}{where}: {bad[0]}",
                              "wait for the next write, or pull the experiment again")
    if not any(snap.get(k) for k in ("progress", "status", "results")):
        raise ExperimentError(f"experiment {name}{where} has not started (no progress.json, status.json "
                              "or results)", f"start it with `mlconnect train --experiment {name}`")


def experiment_rows(base: Path) -> list[dict]:
    """``ls``'s rows: one per experiment folder under ``base`` (name, model, dataset, state, best, date)."""
    from mlconnect.expstate import snapshot
    from mlconnect.watch.render import view

    rows = []
    for d in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if base.is_dir() else []:
        v = view(snapshot(str(d), 0))
        meta = {}
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads((d / "meta.json").read_text())
        date = meta.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(d.stat().st_mtime))
        rows.append({"name": d.name, "model": v["model"], "dataset": v["dataset"], "state": v["state"],
                     "best_metric": v["valid_metric"], "best_value": v["best_valid"], "date": date})
    return rows
