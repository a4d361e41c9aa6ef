"""``mlconnect export`` and ``mlconnect predict``: the model leaves mlconnect (see mlconnect.deploy).

Parse and print only; the work is in mlconnect.deploy (export.py, predict.py).
"""

from __future__ import annotations

from pathlib import Path

import typer

from mlconnect.cli.common import JsonOpt, SshConfigOpt, info, print_json
from mlconnect.errors import MlconnectError, UsageError
from mlconnect.interrupt import signals_interrupt


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MlconnectError(f"this command needs {', '.join(missing)}, which is not installed",
                             "pip install 'mlconnect[deploy]'")


HOST_HELP = "Run on this host (an ~/.ssh/config alias or \\[hosts.NAME]); default: this machine."


def _remote(host: str | None, ssh_config: str | None) -> object | None:
    """The Target for an explicit --host (never the project's default host: these write local files)."""
    if host in (None, "local"):
        return None
    from mlconnect.cli.common import target_from

    return target_from(host, ssh_config)


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        name: str = typer.Argument(..., help="Experiment name (experiments/NAME) or folder."),
        out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to create (must not exist)."),
        fmt: str = typer.Option("onnx", "--format", help="onnx (the torch-free server's) or torch (torch.export)."),
        docker: bool = typer.Option(False, "--docker", help="Add a Dockerfile and a pinned requirements.txt."),
        host: str | None = typer.Option(None, "--host", "-H", help=HOST_HELP),
        ssh_config: str | None = SshConfigOpt,
        as_json: bool = JsonOpt,
    ) -> None:
        """Write a verified, self-contained model bundle (ONNX graph, id maps, histories, card.json)."""
        target = _remote(host, ssh_config)
        if target is not None:  # export there, then pull the bundle (checked again here) into --out
            from mlconnect.deploy.jobs import export_on_host

            extra = ["--format", fmt] + (["--docker"] if docker else [])
            res = export_on_host(target, name, out, extra)
            info(f"exported on {target.name} ({res['remote_dir']}) and pulled")
            print_json(res) if as_json else typer.echo(str(out))
            return
        _require("onnx", "onnxruntime")
        from mlconnect.deploy.export import export_bundle
        from mlconnect.layout import experiment_paths

        with signals_interrupt():  # kill/timeout/stop clean up the half-written bundle as Ctrl-C does
            card = export_bundle(experiment_paths(name).root, out, fmt=fmt, docker=docker, log=info)
        v = card["verification"]
        if as_json:
            print_json({"out": str(out), "verification": v, "files": card["files"], "mlflow": card.get("mlflow")})
            return
        info(f"verified: top-{v['k']} of {v['users']} users equal the engine's (largest score difference "
             f"{v['max_abs_score_diff']:.2g}, {v['tie_swaps']} tie swaps)")
        typer.echo(str(out))

    @app.command("predict")
    def predict_cmd(
        name: str | None = typer.Argument(None, help="Experiment name (or use --bundle)."),
        out: Path = typer.Option(..., "--out", "-o", help="recs.parquet, or .csv"),
        bundle: Path | None = typer.Option(None, "--bundle",
                                           help="Score with this bundle folder (with --host: uploaded to the box)."),
        users: str = typer.Option("all", "--users",
                                  help="'all', or a file with one user id per line (or a CSV with a user_id "
                                       "column). Rows come grouped by user, not in the file's order."),
        k: int = typer.Option(50, "--k", min=1, help="Items per user."),
        exclude_seen: bool = typer.Option(False, "--exclude-seen", help="Leave out items the user already has."),
        wide: bool = typer.Option(False, "--wide", help="One row per user with item_ids and scores lists."),
        threads: int | None = typer.Option(None, "--threads", min=1,
                                           help="Threads for ONNX Runtime and the top-k (default: all cores)."),
        chunk_users: int | None = typer.Option(None, "--chunk-users", min=1, hidden=True,
                                               help="Users per scoring chunk (default: by the scorer)."),
        host: str | None = typer.Option(None, "--host", "-H", help=HOST_HELP + " Detached; fetch with pull."),
        ssh_config: str | None = SshConfigOpt,
        as_json: bool = JsonOpt,
    ) -> None:
        """Top-k for every user (or a list of users), written as Parquet or CSV."""
        if (name is None) == (bundle is None):
            raise UsageError("give an experiment NAME or --bundle DIR", "exactly one of the two")
        target = _remote(host, ssh_config)
        if target is not None:
            from mlconnect.deploy.jobs import predict_on_host

            st = predict_on_host(target, name, str(out), bundle=bundle,  # a local --bundle is uploaded
                                 users=users, k=k, exclude_seen=exclude_seen, wide=wide)
            if as_json:
                print_json(st)
                return
            job, flag = st["job"], f" --host {host}"
            typer.echo(f"{job}: {st.get('state')} on {target.name}; the table: {st['remote_out']} there")
            typer.echo(f"  follow:  mlconnect logs {job} -f{flag}")
            typer.echo(f"  fetch:   mlconnect pull {job}{flag}   (into experiments/{job}/)")
            return
        _require("pyarrow", *(["onnxruntime"] if bundle else []))
        from mlconnect.deploy.predict import Source, predict
        from mlconnect.layout import experiment_paths

        src = Source.from_bundle(bundle, threads) if bundle else Source.from_experiment(experiment_paths(name).root)
        with signals_interrupt():  # kill/timeout/`mlconnect stop` remove the temp file as Ctrl-C does
            res = predict(src, out, users=users, k=k, exclude_seen=exclude_seen, wide=wide,
                          chunk_users=chunk_users)
        if as_json:
            print_json(res)
            return
        info(f"{res['users']:,} users, {res['rows']:,} rows in {res['seconds']:.1f} s "
             f"({res['users_per_s']:,.0f} users/s, {res['device']})")
        typer.echo(res["out"])
