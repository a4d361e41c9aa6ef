"""``mlconnect data``: make datasets in RecBole's atomic-file format.

* ``data synth`` — a deterministic synthetic sequential dataset (:mod:`mlconnect.data.synth`).
* ``data import-movielens PATH`` — MovieLens ``u.data`` / ``ratings.dat`` / ``ratings.csv``.
* ``data fetch-movielens [NAME]`` — download from GroupLens, then import.
* ``data import PATH`` — your own event log (CSV / TSV / Parquet / JSON Lines), with a dataset card.

Each prints the folder it wrote and its size; ``--json`` prints the same fields as one JSON object.
Engine modules are imported inside the commands so that ``mlconnect --help`` stays fast.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer

data_app = typer.Typer(help="Datasets: synthetic data, MovieLens import and download (RecBole atomic files).",
                       no_args_is_help=True)

OutOpt = typer.Option(Path("dataset"), "--out", "-o",
                      help="Data path: the dataset goes to OUT/NAME/ (RecBole's data_path).")
ForceOpt = typer.Option(False, "--force", help="Replace OUT/NAME if it already exists.")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")


def _report(info: dict[str, object], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"wrote {info['path']}: {info['users']:,} users, {info['items']:,} items, "
               f"{info['interactions']:,} interactions")
    typer.echo(f"train on it with: --data-path {info['data_path']} --dataset {info['dataset']}")


def _info(folder: Path, stats: dict[str, int], **extra: object) -> dict[str, object]:
    return {"path": str(folder), "data_path": str(folder.parent), "dataset": folder.name,
            "files": sorted(p.name for p in folder.iterdir()), **stats, **extra}


@data_app.command("synth")
def synth(
    out: Path = OutOpt,
    name: str = typer.Option("synthetic", "--name", help="Dataset name (folder and file stem)."),
    users: int = typer.Option(1000, "--users", help="Number of users."),
    items: int = typer.Option(1700, "--items", help="Number of items in the catalog."),
    interactions: int = typer.Option(100_000, "--interactions", help="Total interactions (>= 5 per user)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same bytes."),
    noise: float = typer.Option(0.3, "--noise", help="Share of random steps (0-1)."),
    force: bool = ForceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Generate a synthetic sequential dataset (Zipf popularity, learnable item chains)."""
    from mlconnect.data.synth import generate

    folder = generate(out, name, n_users=users, n_items=items, n_interactions=interactions, seed=seed,
                      noise=noise, overwrite=force)
    # users and interactions are exact by construction; items is the catalog size
    _report(_info(folder, {"users": users, "items": items, "interactions": interactions}, seed=seed),
            as_json)


@data_app.command("import-movielens")
def import_movielens_cmd(
    path: Path = typer.Argument(..., help="MovieLens folder, or its u.data / ratings.dat / ratings.csv."),
    out: Path = OutOpt,
    name: str | None = typer.Option(None, "--name", help="Dataset name (default: the source folder)."),
    force: bool = ForceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Convert MovieLens ratings (plus movies and users when present) into RecBole atomic files."""
    from mlconnect.data.movielens import import_movielens

    stats: dict[str, int] = {}
    folder = import_movielens(path, out, name, overwrite=force, stats=stats)
    _report(_info(folder, stats), as_json)


@data_app.command("fetch-movielens")
def fetch_movielens_cmd(
    name: str = typer.Argument("ml-100k", help="GroupLens name: ml-100k, ml-1m, ..."),
    out: Path = OutOpt,
    url: str | None = typer.Option(None, "--url", envvar="MLCONNECT_MOVIELENS_URL",
                                   help="Download from here instead of files.grouplens.org."),
    timeout: float = typer.Option(60.0, "--timeout", help="Network timeout in seconds."),
    force: bool = ForceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Download a MovieLens zip from GroupLens and convert it."""
    from mlconnect.data.movielens_fetch import fetch_movielens

    stats: dict[str, int] = {}
    folder = fetch_movielens(name, out, url=url, timeout=timeout, overwrite=force, stats=stats)
    _report(_info(folder, stats), as_json)


@data_app.command("import")
def import_cmd(
    path: Path = typer.Argument(..., help="CSV / TSV (gzip or zstd too), Parquet file or folder, JSON Lines."),
    out: Path = OutOpt,
    name: str | None = typer.Option(None, "--name", help="Dataset name (default: the file name)."),
    user: str | None = typer.Option(None, "--user", help="User column: a header name or 0-based position "
                                      "(default: a common name: user_id, userId, visitorid, session_id, ...)."),
    item: str | None = typer.Option(None, "--item", help="Item column: a header name or 0-based position "
                                      "(default: a common name: item_id, movieId, itemid, parent_asin, asin, ...)."),
    time: str | None = typer.Option(None, "--time", help="Time column: Unix s/ms/us/ns, ISO-8601 or a native timestamp "
                                      "(default: timestamp, time, ...; 'none', or none found: row order)."),
    time_unit: str | None = typer.Option(None, "--time-unit", help="Numeric time unit: s, ms, us, ns (by magnitude)."),
    time_format: str | None = typer.Option(None, "--time-format", help="strptime format of a text time column, e.g. "
                                             "'%Y/%m/%d %H:%M:%S' (default: ISO-8601 or Unix time; UTC unless %z)."),
    header: bool | None = typer.Option(None, "--header/--no-header", help="First line names the columns? (detected)"),
    sep: str | None = typer.Option(None, "--sep", help="Separator of a text file, one or more characters, e.g. ';' "
                                     "or '::' (default: detected; 'tab' for a tab). Tab-separated files are unquoted."),
    where: list[str] = typer.Option([], "--where", help="Keep rows where COLUMN OP VALUE holds (OP: == != < <= > "
                               ">=; a quoted VALUE compares as text, else as a number), e.g. 'event != \"view\"'. "
                               "Repeatable: all must hold."),
    keep: list[str] = typer.Option([], "--keep", help="Also write this column into the .inter file (float when all "
                              "values are numbers, else token): COL or COL=NAME. Repeatable."),
    items: Path | None = typer.Option(None, "--items", help="An item table (any format above) written as the .item "
                                      "file; its item column is named as in the events, or item_id."),
    min_user: int = typer.Option(0, "--min-user-inter", help="k-core: users need at least N interactions."),
    min_item: int = typer.Option(0, "--min-item-inter", help="k-core: items need at least N interactions."),
    dedup: bool = typer.Option(True, "--dedup/--no-dedup", help="Drop repeated (user, item, time) rows."),
    force: bool = ForceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Import an event log into RecBole atomic files, print its dataset card."""
    from mlconnect.data.card import card_rows
    from mlconnect.data.importer import import_events

    if time_unit not in (None, "s", "ms", "us", "ns"):
        raise typer.BadParameter("use s, ms, us or ns", param_hint="--time-unit")
    folder, card = import_events(path, out, name, user=user, item=item, time=time, time_unit=time_unit,
                                 time_format=time_format, header=header, sep=sep,
                                 where=where, keep=keep, items_file=items, min_user_inter=min_user,
                                 min_item_inter=min_item, dedup=dedup, overwrite=force)
    if as_json:
        return typer.echo(json.dumps({**_info(folder, {}), "card": card}, indent=2))
    rows = card_rows(card)
    width = max(len(k) for k, _ in rows)
    typer.echo("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    cfg = shlex.quote(str(folder / "suggested.yaml"))  # a --name with a space must survive copy-paste
    typer.echo(f"wrote {folder} (card.json, suggested.yaml); train: mlconnect train -c {cfg}")


def register(app: typer.Typer) -> None:
    """Add the ``data`` sub-command group to the main app."""
    app.add_typer(data_app, name="data")
