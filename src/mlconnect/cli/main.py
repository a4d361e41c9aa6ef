"""The ``mlconnect`` command: one Typer app, one module per noun.

Command modules parse arguments, call one library function and print. They import heavy
libraries (torch, fastapi) inside the command body so that ``mlconnect --help`` and the
remote-control commands start fast.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import typer
from rich.console import Console
from rich.markup import escape

from mlconnect import __version__
from mlconnect.errors import MlconnectError

app = typer.Typer(
    name="mlconnect",
    help="Train sequential recommenders on your own GPU box over SSH.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module exposes ``register(app)``; the order is the order of ``--help``.
COMMAND_MODULES = ("train", "data", "hosts", "runs", "tunnels", "services", "setup", "serve", "watch", "sweep",
                   "deploy")

_err = Console(stderr=True, highlight=False)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mlconnect {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """mlconnect: setup, runs, tunnels, a RecBole-compatible engine and serving."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"mlconnect.cli.{_name}").register(app)


def report_error(exc: MlconnectError) -> None:
    """Print the one-line error (and the traceback with MLCONNECT_DEBUG=1)."""
    if os.environ.get("MLCONNECT_DEBUG") == "1":
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    _err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, emoji=False)


def _click_exceptions() -> list:
    """The click exception modules in use: typer >= 0.2x vendors click as ``typer._click`` (and no
    longer depends on click), older typer uses click itself; a base install may have only one."""
    found = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    return found


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: maps errors to one line and an exit code."""
    mods = _click_exceptions()
    exits = (typer.Exit, *(m.Exit for m in mods if hasattr(m, "Exit")))
    aborts = (typer.Abort, *(m.Abort for m in mods if hasattr(m, "Abort")))
    click_errors = tuple(m.ClickException for m in mods)
    try:
        rv = app(args=argv, standalone_mode=False)
    except exits as exc:
        sys.exit(exc.exit_code)
    except aborts:
        _err.print("aborted")
        sys.exit(130)
    except click_errors as exc:  # usage errors: click prints the usage line and the message, exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except MlconnectError as exc:
        report_error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _err.print("interrupted")
        sys.exit(130)
    # Without standalone mode, click returns a raised typer.Exit's code instead of exiting.
    if isinstance(rv, int) and not isinstance(rv, bool):
        sys.exit(rv)
