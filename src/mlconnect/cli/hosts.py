"""`mlconnect init`, `sync` and `bootstrap`: the project's settings file, its copy and its venv on the host."""

from __future__ import annotations

from pathlib import Path

import typer

from mlconnect.cli.common import HostOpt, JsonOpt, SshConfigOpt, info, print_json, target_from


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("sync")(sync)
    app.command("bootstrap")(bootstrap)


def init(
    host: str = typer.Option("gpu-box", "--host", "-H", help="Host name (an ~/.ssh/config alias or a new entry)."),
    hostname: str = typer.Option(None, "--hostname", help="Address, when the host is not an ssh alias."),
    port: int = typer.Option(None, "--port", help="SSH port (e.g. 2222 for WSL2)."),
    user: str = typer.Option(None, "--user", help="User on the host."),
    remote_root: str = typer.Option(None, "--remote-root", help="Project folder on the host."),
    data_path: str = typer.Option("data", "--data-path", help="Data folder, relative to the project."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing mlconnect.toml."),
) -> None:
    """Write a commented mlconnect.toml into the current folder."""
    from mlconnect.settings import render_template, write_project_file

    cwd = Path.cwd()
    text = render_template(host=host, hostname=hostname, port=port, user=user, remote_root=remote_root,
                           data_path=data_path, project_name=cwd.name)
    path = write_project_file(cwd, text, force=force)
    info(f"wrote {path}")


def sync(
    host: str = HostOpt,
    ssh_config: str = SshConfigOpt,
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Show what would be sent; change nothing."),
    checksum: bool = typer.Option(False, "--checksum", "-c", help="Compare contents, not size and time."),
    delete: bool = typer.Option(False, "--delete", help="Remove host files deleted here (never experiments/)."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Keep syncing on every change (Ctrl-C stops)."),
    as_json: bool = JsonOpt,
) -> None:
    """rsync the project (the folder holding mlconnect.toml, else the cwd) to the host's remote_root."""
    from mlconnect.remote.sync import sync_project
    from mlconnect.settings import load_settings

    settings = load_settings(overrides={"ssh_config": ssh_config})
    target = target_from(host, ssh_config)
    if target.is_local:
        info("no host: the project is already here, nothing to sync")
        return
    src = settings.root

    def once() -> None:
        r = sync_project(target, src, dry_run=dry_run, checksum=checksum, delete=delete)
        fields = {"host": target.name, "remote_root": target.remote_root, "files": r.files, "bytes": r.bytes,
                  "deleted": r.deleted, "deleted_paths": r.deleted_paths, "dry_run": r.dry_run,
                  "seconds": round(r.seconds, 3)}
        if as_json:
            print_json(fields)
        else:
            verb = "would send" if dry_run else "sent"
            info(f"{verb} {r.files} files ({r.bytes / 1e6:.2f} MB) to {target.name}:{target.remote_root}"
                 + (f", {r.deleted} {'to delete' if dry_run else 'deleted'}" if r.deleted else "")
                 + f" in {r.seconds:.2f} s")
            for path in r.deleted_paths:  # which files, not only how many: a dry run is for reading
                info(f"  {'would delete' if dry_run else 'deleted'} {path}")

    once()
    if watch:
        from watchfiles import watch as watch_changes

        info(f"watching {src} (Ctrl-C stops)")
        try:
            # debounce: watchfiles groups the changes of a burst (an editor save, a git checkout)
            for _changes in watch_changes(src, debounce=300, step=50,
                                          watch_filter=lambda _c, p: "/.git/" not in p
                                          and "/experiments/" not in p):
                once()
        except KeyboardInterrupt:
            pass


def bootstrap(
    host: str = HostOpt,
    ssh_config: str = SshConfigOpt,
    venv: str = typer.Option(None, "--venv", help="The venv on the host; default: the one the host's "
                             "`python` in mlconnect.toml lives in, else ~/.mlconnect/venv."),
    python: str = typer.Option(None, "--python", help="Base interpreter on the host that creates the venv "
                               "(default python3)."),
    torch_spec: str = typer.Option(None, "--torch-spec", help="pip install this first, e.g. 'torch==2.4.1' or "
                                   "'torch --index-url https://download.pytorch.org/whl/cu121'."),
    system_site_packages: bool = typer.Option(False, "--system-site-packages",
                                              help="Let a new venv see the host's packages (reuse a CUDA torch)."),
    write_config: bool = typer.Option(False, "--write-config", help="Set the host's python to the venv's in "
                                      "mlconnect.toml (the user config file outside a project)."),
    extras: list[str] = typer.Option([], "--extra", help="Also install this extra there: sweep (Optuna; "
                                     "`sweep start --host` installs it when missing)."),
    as_json: bool = JsonOpt,
) -> None:
    """Install this exact mlconnect (a wheel built here) in a venv on the host, plus the project's requirements.txt.

    Creates the venv if missing, copies the wheel over and pip-installs it; when this project has a
    requirements.txt it is synced and installed too. A repeat only does what changed ("already up to
    date" when nothing did). With no host there is nothing to install: this machine already runs this
    mlconnect, and the command says so and exits 0.
    """
    from mlconnect.remote.bootstrap import bootstrap as run_bootstrap
    from mlconnect.settings import PROJECT_FILE, load_settings, set_host_python, user_config_path

    settings = load_settings(overrides={"ssh_config": ssh_config})
    target = target_from(host, ssh_config)
    if target.is_local:
        info("no host: this machine already runs this mlconnect; `mlconnect bootstrap --host NAME` sets up a host")
        return
    result = run_bootstrap(target, project_root=settings.root, venv=venv, base_python=python,
                           torch_spec=torch_spec, system_site_packages=system_site_packages, log=info,
                           extras=tuple(extras))
    if write_config and not result.python_configured:
        path = settings.project_root / PROJECT_FILE if settings.project_root else user_config_path()
        set_host_python(path, target.name, result.python)
        result.config_written = str(path)
        result.python_configured = True
        info(f"set python = \"{result.python}\" for {target.name} in {path}")
    if as_json:
        print_json(result.as_dict())
        return
    info(f"python on {target.name}: {result.python}")
    if not result.python_configured:
        info(f'next: set python = "{result.python}" under [hosts.{target.name}] in mlconnect.toml '
             "(or rerun with --write-config)")
