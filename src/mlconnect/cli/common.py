"""Options and output helpers every command shares (see docs/USER-FLOW.md, "Conventions").

``--host`` / ``--ssh-config`` / ``--json`` are defined once here so that every noun spells them the
same way; ``print_table`` prints a rich table for people or JSON with the same fields for scripts.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from mlconnect.remote.ssh import Target, resolve_target

HostOpt = typer.Option(
    None, "--host", "-H", envvar="MLCONNECT_HOST",
    help="An ~/.ssh/config alias or a \\[hosts.NAME] entry in mlconnect.toml; default: the project's "
         "default_host, else this machine ('local' forces this machine).",
)
SshConfigOpt = typer.Option(
    None, "--ssh-config", envvar="MLCONNECT_SSH_CONFIG",
    help="Use this ssh config file for every ssh/rsync call (ssh -F).",
)
JsonOpt = typer.Option(False, "--json", help="Machine-readable output with the same fields.")

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def target_from(host: str | None, ssh_config: str | None) -> Target:
    """The Target for a command's ``--host`` / ``--ssh-config`` values."""
    return resolve_target(host, ssh_config=ssh_config)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def print_table(rows: list[dict], columns: list[str], *, as_json: bool, title: str | None = None,
                key: str | None = None, transpose: bool = False) -> None:
    """A table for people, fitted to the terminal (``cli.tablefit``: ``key`` always stays, ``transpose``
    allows fields as rows), or (``as_json``) a JSON list of the same rows with every field."""
    if as_json:
        sys.stdout.write(json.dumps([{c: r.get(c) for c in columns} for r in rows], default=str) + "\n")
        return
    from mlconnect.cli.tablefit import fit_table

    cells = [{c: _cell(r.get(c)) for c in columns} for r in rows]
    fitted = fit_table(cells, columns, console.width, key=key, allow_transpose=transpose)
    table = Table(title=title, show_lines=False, header_style="bold")
    for c in fitted.columns:
        table.add_column(c, overflow="fold")  # a cell that still cannot fit wraps, it is never cut
    for r in fitted.rows:
        table.add_row(*(r.get(c, "") for c in fitted.columns))
    console.print(table)
    for note in fitted.notes:
        console.print(note, markup=False, highlight=False)  # wrapped at the terminal width too


def print_json(obj: Any) -> None:
    """One JSON document on stdout (for ``--json`` outputs that are not tables)."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")


def info(message: str) -> None:
    """Progress for people, on stderr so that stdout stays clean for ``--json``."""
    err_console.print(message, soft_wrap=True, emoji=False, markup=False)
