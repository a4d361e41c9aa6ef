"""Run lifecycle commands: ``ps``, ``logs``, ``stop``, ``resume``, ``pull``, ``status``, ``exp create``.

Each parses its arguments, calls :mod:`mlconnect.runs.client` (the laptop side of the host agent)
and prints. No torch (or any heavy import) at module level: these commands must start fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from mlconnect.cli.common import HostOpt, JsonOpt, SshConfigOpt, print_json, print_table, target_from
from mlconnect.runs import client


def project_root() -> Path:
    from mlconnect.settings import find_project_root

    return find_project_root() or Path.cwd()


def sync_project(target: Any) -> None:
    """Bring the host's copy of the project up to date; nothing to do on this machine."""
    if not target.is_local:
        from mlconnect.remote.sync import sync_project as rsync_project

        rsync_project(target, project_root())


def launch_train(*, host: str | None, ssh_config: str | None, **run: Any) -> dict:
    """``train --host/--detach/--queue``: sync, start detached, print what to do next.
    ``run``: train's options (config, experiment, model, dataset, data_path, overrides, queue, ...)."""
    from mlconnect.settings import load_settings

    target = target_from(host, ssh_config)
    spec = client.describe_run(target, project_root(), load_settings(overrides={"ssh_config": ssh_config}), **run)
    sync_project(target)
    st = client.launch(target, spec)
    name = spec.experiment
    _warn(st)
    flag = client.host_flag(target)
    where = "" if target.is_local else f" on {target.name}"
    pid = f" (pid {st['pid']})" if st.get("pid") else ""
    typer.echo(f"{name}: {st.get('state')}{where}{pid}")
    typer.echo(f"  follow:  mlconnect logs {name} -f{flag}")
    typer.echo(f"  list:    mlconnect ps{flag}")
    typer.echo(f"  stop:    mlconnect stop {name}{flag}")
    return {"experiment": name, **st}


def _warn(st: dict) -> None:
    for w in st.get("warnings") or []:  # e.g. a WSL2 host that would stop with its last window (#14)
        typer.echo(f"warning: {w}", err=True)


def _echo_state(name: str, st: dict, as_json: bool) -> None:
    print_json(st) if as_json else typer.echo(client.state_line(name, st))


def register(app: typer.Typer) -> None:
    exp_app = typer.Typer(help="Experiments: create one without running it.", no_args_is_help=True)
    app.add_typer(exp_app, name="exp")

    @app.command("ps")
    def ps_cmd(host: str | None = HostOpt, ssh_config: str | None = SshConfigOpt,
               as_json: bool = JsonOpt) -> None:
        """Runs: name, state, epoch, best metric, GPU utilisation, age."""
        res = target_from(host, ssh_config).agent("ps")
        if as_json:
            typer.echo(json.dumps(res["experiments"], indent=2, default=str))
            return
        print_table(client.ps_table_rows(res["experiments"]), ["name", "state", "epoch", "best", "gpu", "age"],
                    as_json=False, title=f"{res['host']}:{res['root']}")

    @app.command("logs")
    def logs_cmd(name: str = typer.Argument(..., help="Experiment name."),
                 follow: bool = typer.Option(False, "-f", "--follow", help="Follow until the run ends."),
                 host: str | None = HostOpt, ssh_config: str | None = SshConfigOpt) -> None:
        """Print a run's training.log; -f follows it across dropped connections."""
        client.follow_logs(target_from(host, ssh_config), name, follow=follow)

    @app.command("stop")
    def stop_cmd(name: str = typer.Argument(..., help="Experiment name."),
                 grace: float = typer.Option(30.0, "--grace", help="Seconds between SIGTERM and SIGKILL."),
                 host: str | None = HostOpt, ssh_config: str | None = SshConfigOpt,
                 as_json: bool = JsonOpt) -> None:
        """Stop a run: SIGTERM (the trainer saves a checkpoint), SIGKILL after --grace."""
        st = target_from(host, ssh_config).agent("stop", "--experiment", name, "--grace", str(grace),
                                                 timeout=grace + 60)
        _echo_state(name, st, as_json)

    @app.command("resume")
    def resume_cmd(name: str = typer.Argument(..., help="Experiment name."),
                   queue: bool = typer.Option(False, "--queue", help="Wait for the GPU (FIFO)."),
                   host: str | None = HostOpt, ssh_config: str | None = SshConfigOpt,
                   as_json: bool = JsonOpt) -> None:
        """Restart a stopped, lost or failed run from its last checkpoint."""
        from mlconnect.settings import load_settings

        target = target_from(host, ssh_config)
        env = client.run_env(target, name, load_settings(overrides={"ssh_config": ssh_config}))
        sync_project(target)
        st = client.resume(target, name, queue=queue, env=env)
        _warn(st)
        _echo_state(name, st, as_json)

    @app.command("pull")
    def pull_cmd(name: str = typer.Argument(..., help="Experiment name."),
                 checkpoints: str = typer.Option("best", "--checkpoints", help="best | all | none"),
                 host: str | None = HostOpt, ssh_config: str | None = SshConfigOpt) -> None:
        """Fetch a run's results, logs, config and checkpoints from the host (incremental rsync)."""
        from mlconnect.sweeps.client import pull_trial  # a sweep trial may live on another box (--hosts)
        target, dest = pull_trial(target_from(host, ssh_config), name, project_root(), checkpoints)
        typer.echo(f"pulled {name} from {target.name} into {dest}")
        if state := client.pulled_while_active(dest):
            typer.echo(f"  {name} is still {state} on {target.name}: this is a snapshot; pull again when it ends")

    @app.command("status")
    def status_cmd(host: str | None = HostOpt, ssh_config: str | None = SshConfigOpt,
                   as_json: bool = JsonOpt) -> None:
        """The host: GPU, disk, load, running runs and services."""
        res = target_from(host, ssh_config).agent("host-status")
        if as_json:
            typer.echo(json.dumps(res, indent=2, default=str))
            return
        typer.echo("\n".join(client.status_lines(res)))

    @exp_app.command("create")
    def exp_create_cmd(name: str = typer.Argument(..., help="Experiment name."),
                       config: str = typer.Option(..., "--config", help="Config file (YAML)."),
                       force: bool = typer.Option(False, "--force", help="Overwrite its config."),
                       host: str | None = HostOpt, ssh_config: str | None = SshConfigOpt,
                       as_json: bool = JsonOpt) -> None:
        """Create an experiment (its resolved config.yaml) without running it."""
        target = target_from(host, ssh_config)
        rel = client.relative_config(config, target, project_root())
        sync_project(target)
        res = target.agent("exp-create", "--experiment", name, "--config", rel or config,
                           *(["--force"] if force else []))
        if as_json:
            print_json(res)
            return
        typer.echo(f"created {name}: {res['config']}")
        typer.echo(f"  run it: mlconnect train --experiment {name}{client.host_flag(target)}")
