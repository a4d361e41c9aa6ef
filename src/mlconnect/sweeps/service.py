"""Sweep lifecycle on the box that holds the study: start, resume, stop, status, best, plots.

Called by :mod:`mlconnect.sweeps.agent` (the host side of ``mlconnect sweep``), here or over ssh.
The sweep is a run like a training run: its controller is started and supervised by
:mod:`mlconnect.runs.launcher` in ``sweeps/<name>/`` (status.json, heartbeat, stop, ``lost``
after a reboot), so the laptop can sleep or go away.
"""

from __future__ import annotations

import base64
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from mlconnect.errors import ExperimentError, UsageError
from mlconnect.expstate import now_iso
from mlconnect.fileio import atomic_write_json, atomic_write_text
from mlconnect.layout import ExperimentPaths
from mlconnect.runs import launcher
from mlconnect.sweeps import study as st
from mlconnect.sweeps.space import check_against_config, load_space, to_dict


def _run_paths(paths: st.SweepPaths) -> ExperimentPaths:
    # The launcher's run files (status.json, training.log, supervisor.log) live in the sweep folder.
    return ExperimentPaths(paths.root)


def _launch(paths: st.SweepPaths) -> dict[str, Any]:
    run_id = launcher.new_run_id()
    argv = [sys.executable, "-X", f"{launcher.MARKER}{run_id}", "-m", "mlconnect.sweeps.run",
            "--sweep-dir", str(paths.root.resolve())]
    return launcher.start_run(_run_paths(paths), argv, run_id=run_id)


def base_config(config: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The user's keys (file + --set + flags): what each trial starts from and best.yaml is made of."""
    from mlconnect.engine.config import load_config, read_config_file

    base = {**(read_config_file(config) if config else {}), **overrides}
    cfg = load_config(None, base)  # all the config's problems at once, before anything starts
    base.setdefault("valid_metric", cfg["valid_metric"])
    return base


def start(*, name: str, config: str | None, space_path: str, trials: int, overrides: dict[str, Any],
          parallel: int = 1, seeds: list[int] | None = None, sampler: str = "tpe", prune: bool = True,
          gpus: list[int] | None = None, sampler_seed: int | None = None,
          boxes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``boxes`` (``--hosts``): this box first, then how this box reaches each other one (see relay)."""
    from mlconnect.engine.config import load_config

    paths = st.sweep_paths(name)
    if paths.spec.exists():
        raise ExperimentError(f"sweep {name} already exists ({paths.root})",
                              f"`mlconnect sweep resume {name}` continues it, or pick another --name")
    taken = sorted(p.name for p in Path("experiments").glob(f"{name}-t[0-9][0-9][0-9]*"))
    if taken:  # the trials' folders would be overwritten: they belong to an earlier sweep of this name
        raise ExperimentError(f"experiments from an earlier sweep named {name} exist ({', '.join(taken[:3])}"
                              f"{', ...' if len(taken) > 3 else ''})", "pick another --name")
    if trials < 1 or parallel < 1:
        raise UsageError("--trials and --parallel must be at least 1", "e.g. --trials 20 --parallel 2")
    if sampler not in st.SAMPLERS:
        raise UsageError(f"--sampler {sampler!r} is not one of {', '.join(st.SAMPLERS)}", "pick one of them")
    space = load_space(space_path)
    base = base_config(config, overrides)
    check_against_config(space, None, base, source=space_path)
    cfg = load_config(None, base)
    spec = {"name": name, "base": base, "space": to_dict(space), "trials": trials, "parallel": parallel,
            "seeds": seeds or [], "sampler": sampler, "prune": prune, "gpus": gpus,
            "sampler_seed": sampler_seed, "metric": cfg["valid_metric"].lower(),
            "direction": "maximize" if cfg["valid_metric_bigger"] else "minimize",
            "created": now_iso(), "config_file": config, "boxes": boxes or []}
    if sampler == "grid":
        st.sampler(spec)  # a float without step is refused now, not in every worker
    st._optuna()
    if boxes:
        from mlconnect.sweeps.relay import check_reachable

        check_reachable(boxes[1:], first=boxes[0]["name"])  # before anything is written: one line naming it
    paths.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(paths.spec, spec)
    st.open_study(paths, spec, create=True)
    return {"sweep": name, "path": str(paths.root.resolve()), **_launch(paths)}


def resume(name: str) -> dict[str, Any]:
    paths = st.find_sweep(name)
    state = (launcher.reconcile(_run_paths(paths)) or {}).get("state")
    if state in launcher.ACTIVE:
        raise ExperimentError(f"sweep {name} is already {state}", f"`mlconnect sweep status {name}` shows it")
    return {"sweep": name, **_launch(paths)}


def stop(name: str, grace_s: float = 30.0) -> dict[str, Any]:
    paths = st.find_sweep(name)
    return {"sweep": name, **launcher.stop_run(_run_paths(paths), grace_s=grace_s)}


def status(name: str) -> dict[str, Any]:
    paths = st.find_sweep(name)
    run = launcher.reconcile(_run_paths(paths)) or {}
    active = run.get("state") in launcher.ACTIVE
    return {**st.summary(paths, sweep_active=active), "state": run.get("state"), "pid": run.get("pid"),
            "host": run.get("host"), "root": str(Path.cwd()),
            "boxes": [b["name"] for b in st.read_spec(paths).get("boxes") or []]}


def list_sweeps() -> list[dict[str, Any]]:
    base = Path(st.SWEEPS_DIR)
    rows = []
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if (d / "spec.json").is_file():
            run = launcher.reconcile(ExperimentPaths(d)) or {}
            rows.append({"sweep": d.name, "state": run.get("state"), "created": run.get("created")})
    return rows


def best(name: str) -> dict[str, Any]:
    """The winning config as YAML text (the laptop writes it wherever --write says)."""
    import yaml

    paths = st.find_sweep(name)
    cfg = st.best_config(paths)
    summary = st.summary(paths, sweep_active=False)
    text = (f"# best trial {summary['best']['number']} of sweep {name}: {summary['metric']} "
            f"{summary['best']['value']:.4f}\n" + yaml.safe_dump(cfg, sort_keys=False))
    return {"sweep": name, "best": summary["best"], "config": cfg, "yaml": text}


def plots(name: str) -> dict[str, Any]:
    """Optuna's optimization history and parameter importances as PNGs (base64 for the trip home)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ovm
    except ModuleNotFoundError:
        raise ExperimentError("--plot needs matplotlib on the box that holds the study",
                              "install the plot extra there: pip install 'mlconnect[plot]'") from None
    paths = st.find_sweep(name)
    study = st.open_study(paths, st.read_spec(paths))
    out: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for key, fn in (("history", ovm.plot_optimization_history), ("importances", ovm.plot_param_importances),
                    ("intermediate", ovm.plot_intermediate_values)):
        try:
            ax = fn(study)
        except (ValueError, RuntimeError) as exc:  # importances need 2+ finished trials
            skipped[key] = str(exc)
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(8, 5)
        with tempfile.TemporaryDirectory() as tmp:
            png = os.path.join(tmp, f"{key}.png")
            fig.savefig(png, dpi=100, bbox_inches="tight")
            out[key] = base64.b64encode(Path(png).read_bytes()).decode()
        plt.close(fig)
    return {"sweep": name, "png": out, "skipped": skipped}


def write_best(name: str, dest: str) -> dict[str, Any]:
    res = best(name)
    atomic_write_text(Path(dest), res["yaml"])
    return res
