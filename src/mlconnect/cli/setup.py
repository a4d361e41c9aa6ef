"""`mlconnect setup client|server|windows|vscode` (one-time setup) and `mlconnect doctor` (the checklist).

The work is in ``mlconnect.setup.*``, imported inside each command so that ``--help`` stays fast.
"""

from __future__ import annotations

import typer

from mlconnect.cli.common import JsonOpt, SshConfigOpt, console, info, print_json

setup_app = typer.Typer(name="setup", help="One-time setup: SSH key and config, hardened sshd, WSL2 scripts, "
                        "VS Code.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(setup_app, name="setup")
    app.command("doctor")(doctor)


@setup_app.command("client")
def client(
    name: str = typer.Option(..., "--name", help="The alias for the box, e.g. mellowise-ml."),
    hostname: str = typer.Option(..., "--hostname", help="The box's address (the Windows host's LAN IP)."),
    port: int = typer.Option(2222, "--port", help="SSH port on the box."),
    user: str = typer.Option(None, "--user", help="Login name on the box (default: yours here)."),
    ssh_config: str = typer.Option(None, "--ssh-config", help="The ssh config file to edit (default ~/.ssh/config)."),
    key: str = typer.Option(None, "--key", help="Private key to use or create (default <ssh dir>/NAME_ed25519)."),
) -> None:
    """On the laptop: create a key if missing and write a marked block into ~/.ssh/config."""
    from pathlib import Path

    from mlconnect.setup.client import setup_client

    r = setup_client(name=name, hostname=hostname, port=port, user=user,
                     ssh_config=Path(ssh_config) if ssh_config else None, key=Path(key) if key else None)
    info(f"{'created' if r.key_created else 'using existing'} key {r.key}")
    if r.changed:
        info(f"wrote the `{name}` block in {r.ssh_config}" + (f" (backup: {r.backup})" if r.backup else ""))
    else:
        info(f"{r.ssh_config} already has this `{name}` block: nothing changed")
    for w in r.warnings:
        info(f"warning: {w}")
    info("public key (goes into the box's authorized_keys):")
    typer.echo(r.public_key)
    info("on the box (WSL2 Ubuntu), run once:")
    typer.echo(f"  {r.server_command}")
    info(f"then test from here: ssh {name} true")


@setup_app.command("server")
def server(
    port: int = typer.Option(2222, "--port", help="Port sshd listens on."),
    authorized_key: str = typer.Option(None, "--authorized-key",
                                       help="A public key line, or a file of them, to allow."),
    user: str = typer.Option(None, "--user", help="The only user allowed to log in (default: you, or SUDO_USER)."),
    apply: bool = typer.Option(False, "--apply", help="Make the changes (default: dry run, print the plan)."),
    prefix: str = typer.Option("/", "--prefix", help="Install under this root instead of / (tests, images)."),
) -> None:
    """On the box: a key-only sshd drop-in, validated with sshd -t before it is installed."""
    from mlconnect.setup.server import setup_server

    report = setup_server(port=port, authorized_key=authorized_key, user=user, apply=apply, prefix=prefix)
    for line in report.lines:
        typer.echo(line)


@setup_app.command("windows")
def windows(
    out: str = typer.Option(..., "--out", help="Folder to write the scripts into."),
    lan: str = typer.Option(..., "--lan", help="Your LAN subnet, e.g. 192.168.1.0/24 (the only source allowed)."),
    ssh_port: int = typer.Option(2222, "--ssh-port", help="The SSH port of sshd in WSL2."),
    memory: str = typer.Option(None, "--memory", help="WSL2 memory, e.g. 24GB (default: 3/4 of the PC's RAM)."),
    processors: int = typer.Option(None, "--processors", help="WSL2 processors (default: 3/4 of the PC's)."),
    no_idle_timeout: bool = typer.Option(False, "--no-idle-timeout", help="Write [general] instanceIdleTimeout=-1 "
                                         "(the distro; WSL 2.5.8+) and [wsl2] vmIdleTimeout=-1 (the VM)."),
    mirrored: bool = typer.Option(False, "--mirrored", help="WSL mirrored networking instead of a port forward "
                                  "(Windows 11 22H2+)."),
    at_startup: bool = typer.Option(False, "--at-startup", help="The keep-alive task also starts WSL at boot, "
                                    "before logon (stores your Windows password with the task)."),
    distro: str = typer.Option("", "--distro", help="The WSL distro to keep up (default: WSL's default one)."),
) -> None:
    """For Windows: .wslconfig, keep-alive task, SSH-only forward and LAN-only firewall scripts, undo, README."""
    from pathlib import Path

    from mlconnect.setup.windows import notes, write_windows_setup

    files = write_windows_setup(Path(out), lan=lan, ssh_port=ssh_port, memory=memory, processors=processors,
                                no_idle_timeout=no_idle_timeout, mirrored=mirrored, at_startup=at_startup,
                                distro=distro)
    for f in files:
        info(f"wrote {f}")
    for line in notes(at_startup=at_startup, no_idle_timeout=no_idle_timeout):
        info(line)
    info(f"next: read {Path(out) / 'README.txt'} and run the steps in order, in PowerShell as Administrator")


@setup_app.command("vscode")
def vscode(
    host: str = typer.Option(None, "--host", "-H", help="The ssh alias VS Code connects to (default: the project's "
                             "default_host)."),
    python: str = typer.Option(None, "--python", help="Interpreter on the host (default: the host's `python` in "
                               "mlconnect.toml)."),
    path: str = typer.Option(".", "--path", help="Project folder holding .vscode/."),
) -> None:
    """Merge Remote-SSH settings into .vscode/settings.json, keeping every other key."""
    from pathlib import Path

    from mlconnect.setup.vscode import setup_vscode

    r = setup_vscode(Path(path), host=host, python=python)
    info(f"{'updated' if r.changed else 'unchanged'}: {r.path}" + (f" (backup: {r.backup})" if r.backup else ""))
    for k in r.keys:
        info(f"  {k}")


def doctor(
    host: str = typer.Option(None, "--host", "-H", envvar="MLCONNECT_HOST",
                             help="The host to check (default: the project's default_host, else this machine)."),
    ssh_config: str = SshConfigOpt,
    as_json: bool = JsonOpt,
    smoke: bool = typer.Option(False, "--smoke", help="Also train one epoch on a tiny synthetic dataset there."),
) -> None:
    """The validation checklist: PASS / WARN / FAIL with a one-line fix each; exit 1 when anything FAILs."""
    from mlconnect.setup.doctor import run_doctor

    report = run_doctor(host, ssh_config=ssh_config, smoke=smoke)
    if as_json:
        print_json(report.to_json())
    else:
        from rich.markup import escape
        from rich.table import Table

        colors = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red"}
        table = Table(title=f"mlconnect doctor: {report.where}", header_style="bold")
        for c in ("check", "status", "detail", "fix"):
            table.add_column(c, overflow="fold")
        for c in report.checks:
            table.add_row(c.name, f"[{colors[c.status]}]{c.status}[/]", escape(c.detail), escape(c.fix))
        console.print(table)
        console.print(report.summary(), markup=False)
    if report.failed:
        # Not typer.Exit: main() runs click with standalone_mode=False, which returns Exit's code
        # instead of exiting with it.
        raise SystemExit(1)
