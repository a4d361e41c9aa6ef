"""`mlconnect init` and `mlconnect sync`: the project's settings file and its copy on the host."""

from __future__ import annotations

from pathlib import Path

import typer

from mlconnect.cli.common import HostOpt, JsonOpt, SshConfigOpt, info, print_json, target_from


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("sync")(sync)


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
                  "deleted": r.deleted, "dry_run": r.dry_run, "seconds": round(r.seconds, 3)}
        if as_json:
            print_json(fields)
        else:
            verb = "would send" if dry_run else "sent"
            info(f"{verb} {r.files} files ({r.bytes / 1e6:.2f} MB) to {target.name}:{target.remote_root}"
                 + (f", {r.deleted} deleted" if r.deleted else "") + f" in {r.seconds:.2f} s")

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
