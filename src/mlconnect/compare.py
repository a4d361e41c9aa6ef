"""``mlconnect compare``: one row per experiment, differing config keys, best values, a PNG of curves.

Reads only files (config.yaml, results/metrics.json, TensorBoard events), so local and pulled
experiments compare the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mlconnect.errors import ExperimentError, MlconnectError
from mlconnect.expstate import snapshot
from mlconnect.layout import EXPERIMENTS_DIR, ExperimentPaths, check_experiment_name, experiment_paths

# Metric columns and whether bigger is better (valid/test ranking metrics are all bigger-better).
LOWER_BETTER = {"wall_time_s", "peak_gpu_mem_mb"}


def load_run(name: str, root: Path) -> dict:
    """Config + results of one experiment; one-line errors for missing or corrupt files."""
    paths: ExperimentPaths = experiment_paths(check_experiment_name(name), base=root / EXPERIMENTS_DIR)
    if not paths.root.is_dir():
        raise ExperimentError(f"unknown experiment {name!r} in {paths.root.parent}",
                              "see `mlconnect ls`, or `mlconnect pull` it first")
    snap = snapshot(str(paths.root), 0)
    state = snap["state"]["state"]
    bad = [p for p in snap["problems"] if p.startswith("metrics.json")]
    if bad:
        raise ExperimentError(f"{paths.results}: {bad[0]}", "pull the experiment again")
    results = snap["results"]
    if results is None:
        raise ExperimentError(f"experiment {name} has no results/metrics.json (state: {state})",
                              "compare finished runs, or wait for this one to end")
    try:
        cfg = yaml.safe_load(paths.config.read_text()) or {}
    except FileNotFoundError:
        cfg = {}
    except yaml.YAMLError as exc:  # str(exc) spans lines: name the line, as the config loader does
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "somewhere"
        raise ExperimentError(f"{paths.config}: not valid YAML ({where}: {getattr(exc, 'problem', None)})",
                              "pull the experiment again") from None
    return {"name": paths.name, "paths": paths, "config": cfg, "results": results, "state": state}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing_keys(configs: list[dict]) -> list[str]:
    """Config keys (nested ones as ``a.b``) whose value is not the same in every run."""
    flat = [_flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]


def compare_rows(runs: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """Rows (raw numbers) and ``{column: name of the best run}`` for every metric column."""
    diff = differing_keys([r["config"] for r in runs])
    rows = []
    for r in runs:
        res, flat = r["results"], _flatten(r["config"])
        metric = res.get("valid_metric")
        row = {"name": r["name"], "state": r.get("state"), "model": res.get("model"), "dataset": res.get("dataset"),
               "config": {k: flat.get(k) for k in diff}, "valid_metric": metric,
               "best_valid": (res.get("best_valid") or {}).get(metric),
               "epochs": res.get("epochs"), "best_epoch": res.get("best_epoch"),
               "wall_time_s": res.get("wall_time_s"),
               "throughput_tokens_per_s": res.get("throughput_tokens_per_s"),
               "peak_gpu_mem_mb": res.get("peak_gpu_mem_mb")}
        for k, v in (res.get("test") or {}).items():
            row[f"test/{k}"] = v
        rows.append(row)
    cols = ["best_valid", "wall_time_s", "throughput_tokens_per_s", "peak_gpu_mem_mb"]
    cols += sorted({k for row in rows for k in row if k.startswith("test/")})
    best = {}
    for c in cols:
        vals = [(row[c], row["name"]) for row in rows if isinstance(row.get(c), (int, float))]
        if len(vals) >= 2:
            best[c] = (min(vals) if c in LOWER_BETTER else max(vals))[1]
    return rows, best


def table_rows(rows: list[dict], best: dict[str, str]) -> tuple[list[str], list[dict]]:
    """Columns and rows for people: one column per config key that differs (``config.`` only where a key
    shares a name with another column), the best value of each metric column marked with ``*``."""
    metrics = ["best_valid", "epochs", "wall_time_s", "throughput_tokens_per_s", "peak_gpu_mem_mb"]
    metrics += sorted({k for r in rows for k in r if k.startswith("test/")})
    label = {k: f"config.{k}" if k in {"name", "model", "dataset", *metrics} else k
             for k in sorted({k for r in rows for k in r["config"]})}
    cols = ["name", "model", "dataset", *label.values(), *metrics]
    shown = []
    for r in rows:
        s = {c: r.get(c) for c in cols}
        s.update({label[k]: v for k, v in r["config"].items()})
        for c, who in best.items():
            if who == r["name"]:
                s[c] = f"{r[c]:.4g}*"
        shown.append(s)
    return cols, shown


def figure(runs: list[dict], metric: str | None = None) -> Any:
    """The matplotlib figure: the valid metric per epoch (integer ticks) and the training loss per step."""
    try:
        import matplotlib
    except ImportError:
        raise MlconnectError("--plot needs matplotlib, which is not installed",
                             "pip install 'mlconnect[plot]' (or pip install matplotlib)") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metric = metric or runs[0]["results"].get("valid_metric")
    fig, (ax_v, ax_l) = plt.subplots(1, 2, figsize=(12, 4.5))
    drawn = 0
    for r in runs:
        acc = EventAccumulator(str(r["paths"].tensorboard), size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags().get("scalars", [])
        vtag = next((t for t in tags if t.lower() == f"valid/{metric}".lower()), None)
        if vtag:
            ev = acc.Scalars(vtag)
            ax_v.plot([e.step for e in ev], [e.value for e in ev], marker="o", label=r["name"])
            drawn += 1
        if "train/loss" in tags:
            ev = acc.Scalars("train/loss")
            ax_l.plot([e.step for e in ev], [e.value for e in ev], label=r["name"])
    if not drawn:
        plt.close(fig)
        raise ExperimentError(f"no valid/{metric} TensorBoard events in any of the experiments' logs/",
                              "pull the experiments with their logs, or pick another --metric")
    ax_v.set(title=f"valid {metric}", xlabel="epoch")
    ax_v.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.2, 1.4 ticks
    ax_l.set(title="train loss", xlabel="step")
    ax_l.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_v, ax_l):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def plot(runs: list[dict], out: Path, metric: str | None = None) -> Path:
    """PNG of the valid metric (per epoch) and the training loss of every run on shared axes."""
    fig = figure(runs, metric)  # first: it turns a missing matplotlib into one line
    import matplotlib.pyplot as plt

    from mlconnect.fileio import replacing

    try:  # atomic, and a path that cannot be written is one line (it was a traceback)
        with replacing(out) as f:
            fig.savefig(f, dpi=100, format=out.suffix.lstrip(".").lower() or "png")
    finally:
        plt.close(fig)
    return out
