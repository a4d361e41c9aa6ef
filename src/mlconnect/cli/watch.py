"""``mlconnect monitor`` (live dashboard) and ``mlconnect ls`` (local experiments).

No torch / matplotlib / mlflow at module level: these commands must start fast.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from mlconnect.cli.common import HostOpt, JsonOpt, SshConfigOpt, info, print_json, print_table, target_from
from mlconnect.errors import MlconnectError
from mlconnect.layout import EXPERIMENTS_DIR, check_experiment_name


def monitor(name: str = typer.Argument(..., help="Experiment name."),
            host: str | None = HostOpt, ssh_config: str | None = SshConfigOpt,
            interval: float = typer.Option(2.0, "--interval", help="Seconds between refreshes."),
            once: bool = typer.Option(False, "--once", help="Print one frame and exit."),
            as_json: bool = JsonOpt) -> None:
    """Live dashboard of a run until it ends, then a summary."""
    from rich.console import Console
    from rich.live import Live

    from mlconnect.watch.render import TERMINAL, render_frame, render_summary, view
    from mlconnect.watch.source import check_first_snapshot, read_snapshot

    check_experiment_name(name)
    target = target_from(host, ssh_config)
    where = "" if target.is_local else f" on {target.name}"
    snap = read_snapshot(target, name)
    check_first_snapshot(snap, name, where)
    console = Console(highlight=False)
    if once or as_json:
        v = view(snap)
        if as_json:
            print_json(v)
        else:
            console.print(render_frame(v))
        return
    last_good = snap
    lost_at: float | None = None
    with Live(render_frame(view(snap)), console=console, refresh_per_second=4, transient=False) as live:
        while view(last_good)["state"] not in TERMINAL:
            time.sleep(interval)
            try:
                snap = read_snapshot(target, name)
            except MlconnectError as exc:  # dropped connection: keep the last frame, try again
                if lost_at is None:
                    # A line too, not only the frame: piped to a file, the frames never show (rich
                    # draws a Live display only on a terminal), and this is what the person wants to know.
                    lost_at = time.monotonic()
                    info(f"lost the connection to {target.name} ({exc.message}); reconnecting every "
                         f"{interval:g} s — Ctrl-C to stop")
                live.update(render_frame(view(last_good), reconnecting=exc.message))
                continue
            if lost_at is not None:
                info(f"reconnected to {target.name} after {time.monotonic() - lost_at:.0f} s")
                lost_at = None
            if snap.get("progress") is None and last_good.get("progress") is not None:
                snap = {**snap, "progress": last_good["progress"]}  # a transient bad read
            last_good = snap
            live.update(render_frame(view(snap)))
    if not console.is_terminal:
        console.line()  # rich ends the last frame with a newline only on a terminal
    console.print(render_summary(view(last_good)))


def ls(as_json: bool = JsonOpt) -> None:
    """Local experiments: name, model, dataset, state, best metric, date."""
    from mlconnect.settings import load_settings
    from mlconnect.watch.source import experiment_rows

    base = load_settings().root / EXPERIMENTS_DIR
    rows = experiment_rows(base)
    print_table(rows, ["name", "model", "dataset", "state", "best_metric", "best_value", "date"],
                as_json=as_json, title=None if as_json else f"experiments in {base}", key="name")


def compare(names: list[str] = typer.Argument(..., help="Two or more experiment names."),
            plot: Path | None = typer.Option(None, "--plot", help="Write a PNG of the curves."),
            metric: str | None = typer.Option(None, "--metric", help="Valid metric to plot."),
            as_json: bool = JsonOpt) -> None:
    """One row per experiment; the best value in each metric column is marked with *."""
    from mlconnect import compare as cmp
    from mlconnect.errors import UsageError
    from mlconnect.settings import load_settings

    if len(names) < 2:
        raise UsageError("compare needs at least two experiments", "mlconnect compare A B [C ...]")
    root = load_settings().root
    runs = [cmp.load_run(n, root) for n in names]
    rows, best = cmp.compare_rows(runs)
    if plot is not None:
        cmp.plot(runs, plot, metric)
    if as_json:
        print_json({"rows": rows, "best": best, "plot": str(plot) if plot else None})
        return
    cols, shown = cmp.table_rows(rows, best)
    print_table(shown, cols, as_json=False, title="* marks the best value", key="name", transpose=True)
    if plot is not None:
        typer.echo(f"plot written to {plot}")


def register(app: typer.Typer) -> None:
    app.command("monitor")(monitor)
    app.command("compare")(compare)
    app.command("ls")(ls)
