"""``mlconnect sweep``: Optuna hyperparameter search whose trials are ordinary experiments.

Parse, call the sweep agent (here, or on the box through ssh), print. The study lives where the
sweep runs, in ``sweeps/<name>/`` (see :mod:`mlconnect.sweeps.study`).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path

import typer

from mlconnect.cli.common import HostOpt, JsonOpt, SshConfigOpt, print_table, target_from

sweep_app = typer.Typer(help="Hyperparameter sweeps (Optuna): start, status, stop, resume, best.",
                        no_args_is_help=True)


def _call(host: str | None, ssh_config: str | None, verb: str, *args: str, timeout: float = 60) -> dict:
    from mlconnect.sweeps.client import call

    return call(target_from(host, ssh_config), verb, *args, timeout=timeout)


@sweep_app.command("start")
def start_cmd(
    config: str = typer.Option(None, "--config", "-c", help="Base config (YAML) every trial starts from."),
    space: str = typer.Option(..., "--space", help="space.yaml: key: {float: [lo, hi]}, {int: ..}, {choice: ..}"),
    trials: int = typer.Option(20, "--trials", help="How many trials the study runs."),
    name: str = typer.Option(None, "--name", help="Sweep name (default: sweep-<time>)."),
    parallel: int = typer.Option(1, "--parallel", help="Trials at once (per box): one per GPU, or CPU processes."),
    seeds: str = typer.Option(None, "--seeds", help="Train each config once per seed: 2020,2021 (mean)."),
    sampler: str = typer.Option("tpe", "--sampler", help="tpe | random | grid"),
    no_prune: bool = typer.Option(False, "--no-prune", help="Never stop a trial early (median pruner off)."),
    gpus: str = typer.Option(None, "--gpus", help="GPUs the workers take turns on: 0,1 (default: all)."),
    sets: list[str] = typer.Option([], "--set", "-s", help="Override a config key (repeatable)."),
    model: str = typer.Option(None, "--model", "-m"), dataset: str = typer.Option(None, "--dataset", "-d"),
    data_path: str = typer.Option(None, "--data-path"),
    hosts: str = typer.Option(None, "--hosts", help="Spread trials over boxes a,b (the study lives on a)."),
    host: str = HostOpt, ssh_config: str = SshConfigOpt, as_json: bool = JsonOpt,
) -> None:
    """Start a sweep detached (here, on the box with --host, or over boxes with --hosts); returns in seconds."""
    from mlconnect.cli.runs import project_root, sync_project
    from mlconnect.remote.extras import ensure_extra
    from mlconnect.runs.client import host_flag, relative_config
    from mlconnect.sweeps.client import box_entry, resolve_boxes, start_args

    boxes = resolve_boxes(hosts, host, ssh_config) if hosts else []
    host = boxes[0].name if boxes else host
    target = target_from(host, ssh_config)
    name = name or f"sweep-{datetime.now():%Y%m%d-%H%M%S}"
    per_box = data_path is None  # each box's own data_path (mlconnect.toml) unless --data-path names one
    if data_path is None and target.host is not None and target.host.data_path:
        data_path = target.host.data_path
    flags = [f"{k}={v}" for k, v in (("model", model), ("dataset", dataset), ("data_path", data_path)) if v]
    rel_config, rel_space = (relative_config(c, target, project_root()) for c in (config, space))
    for t in boxes or [target]:
        if not t.is_local:  # the box needs Optuna (the `sweep` extra): installed when missing
            ensure_extra(t, "sweep", log=lambda line: typer.echo(line, err=True))
        sync_project(t)
    args = start_args(name=name, config=rel_config, space=rel_space or space, trials=trials, parallel=parallel,
                      seeds=seeds, sampler=sampler, prune=not no_prune, gpus=gpus, sets=[*sets, *flags])
    if boxes:
        args += ["--boxes", json.dumps([box_entry(t, per_box) for t in boxes])]
    res = _call(host, ssh_config, "start", *args, timeout=180)
    if as_json:
        typer.echo(json.dumps(res, default=str))
        return
    where = f" on {', '.join(t.name for t in boxes)}" if boxes else "" if target.is_local else f" on {target.name}"
    typer.echo(f"sweep {name}: {res.get('state')}{where} ({trials} trials, {parallel} at a time"
               f"{' per box' if boxes else ''})")
    for verb, extra in (("status", ""), ("best", " --write best.yaml"), ("stop", "")):
        typer.echo(f"  {verb + ':':8} mlconnect sweep {verb} {name}{extra}{host_flag(target)}")


@sweep_app.command("status")
def status_cmd(name: str = typer.Argument(...), plot: Path = typer.Option(
        None, "--plot", help="Write Optuna's history/importance plots (PNG) into this folder."),
        host: str = HostOpt, ssh_config: str = SshConfigOpt, as_json: bool = JsonOpt) -> None:
    """Trials (state, params, value, pruned-at epoch) and the best so far."""
    res = _call(host, ssh_config, "status", "--name", name)
    if plot is not None:
        pngs = _call(host, ssh_config, "plot", "--name", name, timeout=180)
        plot.mkdir(parents=True, exist_ok=True)
        for key, data in pngs["png"].items():
            (plot / f"{name}-{key}.png").write_bytes(base64.b64decode(data))
        res["plots"] = sorted(str(plot / f"{name}-{k}.png") for k in pngs["png"])
    if as_json:
        typer.echo(json.dumps(res, default=str))
        return
    rows = [{"trial": r["number"], "state": r["state"], "value": r["value"], "pruned_at": r["pruned_at"],
             "box": r.get("box") or r.get("host"),
             "params": ", ".join(f"{k}={_fmt(v)}" for k, v in r["params"].items())} for r in res["trials"]]
    print_table(rows, ["trial", "state", "value", "pruned_at", "box", "params"], as_json=False,
                title=f"sweep {name}: {res['state']} — {res['metric']} ({res['direction']})")
    counts = ", ".join(f"{v} {k}" for k, v in sorted(res["counts"].items()))
    typer.echo(f"{counts or 'no trials yet'} (of {res['trials_wanted']})")
    b = res["best"]
    typer.echo("best: none finished yet" if b is None else
               f"best: trial {b['number']} {res['metric']} {b['value']:.4f} ({', '.join(b['experiments'])})")
    for p in res.get("plots", []):
        typer.echo(f"plot: {p}")


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@sweep_app.command("stop")
def stop_cmd(name: str = typer.Argument(...), grace: float = typer.Option(30.0, "--grace"),
             host: str = HostOpt, ssh_config: str = SshConfigOpt) -> None:
    """Stop the sweep: running trials checkpoint; `sweep resume` queues them again."""
    res = _call(host, ssh_config, "stop", "--name", name, "--grace", str(grace), timeout=grace + 60)
    typer.echo(f"sweep {name}: {res.get('state')}")


@sweep_app.command("resume")
def resume_cmd(name: str = typer.Argument(...), host: str = HostOpt, ssh_config: str = SshConfigOpt) -> None:
    """Continue a stopped (or rebooted) sweep: finished trials kept, interrupted ones queued again."""
    res = _call(host, ssh_config, "resume", "--name", name, timeout=120)
    typer.echo(f"sweep {name}: {res.get('state')}")


@sweep_app.command("best")
def best_cmd(name: str = typer.Argument(...), write: Path = typer.Option(None, "--write", help="Write it here."),
             host: str = HostOpt, ssh_config: str = SshConfigOpt, as_json: bool = JsonOpt) -> None:
    """The best trial's config (base config + its params), ready for `mlconnect train --config`."""
    from mlconnect.fileio import atomic_write_text

    if (res := _call(host, ssh_config, "best", "--name", name)) and write is not None:
        atomic_write_text(write, res["yaml"])
    if as_json:
        typer.echo(json.dumps(res, default=str))
    elif write is not None:
        typer.echo(f"wrote {write}: trial {res['best']['number']}, value {res['best']['value']:.4f}")
    else:
        typer.echo(res["yaml"], nl=False)


@sweep_app.command("list")
def list_cmd(host: str = HostOpt, ssh_config: str = SshConfigOpt, as_json: bool = JsonOpt) -> None:
    """Sweeps on this machine (or the box) and their state."""
    print_table(_call(host, ssh_config, "list")["sweeps"], ["sweep", "state", "created"], as_json=as_json)


def register(app: typer.Typer) -> None:
    app.add_typer(sweep_app, name="sweep")
