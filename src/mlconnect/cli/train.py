"""``mlconnect train`` and ``mlconnect quickstart``: the engine from the command line.

With no host, ``train`` runs in the foreground on this machine (progress, then a metrics table).
With ``--host`` (or ``--detach`` / ``--queue``, or a project default host) it hands over to the runs
layer, which syncs the project and starts the same command detached on the box.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from mlconnect.cli.common import HostOpt, SshConfigOpt
from mlconnect.errors import UsageError
from mlconnect.layout import check_experiment_name, default_experiment_name, experiment_paths

_out = Console(highlight=False)


def _launched_by_runs_layer() -> bool:
    """True inside a run the launcher started (``-X mlconnect-run=``), or a rank torchrun started."""
    return any(k.startswith("mlconnect-run") for k in getattr(sys, "_xoptions", {})) or "LOCAL_RANK" in os.environ


def _remote_wanted(host: str | None, detach: bool, queue: bool, ssh_config: str | None) -> bool:
    """One rule: this machine (no host, ``--host local``...) trains in the foreground unless
    --detach/--queue; any other host gets a detached run."""
    if _launched_by_runs_layer():
        return False  # we *are* the detached run: never hand over again
    from mlconnect.cli.common import target_from

    return detach or queue or not target_from(host, ssh_config).is_local


def print_results(results: dict[str, Any]) -> None:
    """The metrics table people read at the end of a run."""
    table = Table(title=f"{results['model']} on {results['dataset']} — {results['experiment']}")
    table.add_column("metric")
    table.add_column("valid", justify="right")
    table.add_column("test", justify="right")
    for key, test_value in results["test"].items():
        table.add_row(key, f"{results['best_valid'].get(key, float('nan')):.4f}", f"{test_value:.4f}")
    _out.print(table)
    _out.print(f"best epoch {results['best_epoch']} of {results['epochs']}, "
               f"{results['wall_time_s']:.1f}s training ({results['seconds_per_epoch']:.2f}s/epoch, "
               f"{results['throughput_tokens_per_s']:,.0f} tokens/s) on {results['device']}")


def run_foreground(config: Path | None, experiment: str | None, model: str | None, dataset: str | None,
                   data_path: str | None, sets: list[str], resume: bool, force: bool, device: str | None,
                   json_out: bool = False) -> dict[str, Any]:
    """Train on this machine and print the results (the library call behind ``mlconnect train``)."""
    from mlconnect.engine.experiment import run_config
    from mlconnect.engine.trainer import train as train_engine

    if experiment is not None:
        check_experiment_name(experiment)
    if resume and not experiment:
        raise UsageError("--resume needs --experiment NAME", "name the experiment to continue")
    cfg = run_config(config, experiment, model=model, dataset=dataset, data_path=data_path, sets=sets,
                     device=device)
    name = experiment or default_experiment_name(cfg["model"], cfg["dataset"])
    if json_out:
        import contextlib
        import json
        import sys

        # stdout carries the JSON alone (scripts parse it); the progress lines go to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            results = train_engine(cfg, experiment_paths(name).root, resume=resume, force=force)
        typer.echo(json.dumps(results, indent=2))
        return results
    results = train_engine(cfg, experiment_paths(name).root, resume=resume, force=force)
    print_results(results)
    _out.print(f"TensorBoard: mlconnect tensorboard {name}   (logs in "
               f"{experiment_paths(name).tensorboard})")
    return results


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        config: Path = typer.Option(None, "--config", "-c", help="RecBole-style YAML config."),
        experiment: str = typer.Option(None, "--experiment", "-e", help="Experiment name (folder under experiments/)."),
        model: str = typer.Option(None, "--model", "-m", help="SASRec, GRU4Rec or BERT4Rec."),
        dataset: str = typer.Option(None, "--dataset", "-d", help="Dataset name (folder under the data path)."),
        data_path: str = typer.Option(None, "--data-path", help="Folder holding <dataset>/<dataset>.inter."),
        sets: list[str] = typer.Option([], "--set", "-s", help="Override a config key: --set epochs=20 (repeatable)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the experiment's last checkpoint."),
        force: bool = typer.Option(False, "--force", help="Overwrite an existing experiment."),
        device: str = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps."),
        host: str = HostOpt,
        ssh_config: str = SshConfigOpt,
        detach: bool = typer.Option(False, "--detach", help="Start detached on this machine and return."),
        queue: bool = typer.Option(False, "--queue", help="Wait for the GPU: start when earlier runs finish."),
        json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
        nproc: int = typer.Option(None, "--nproc", help="DDP: N processes (torchrun; gloo on CPU, NCCL on GPUs)."),
        gpus: str = typer.Option(None, "--gpus", help="DDP on these GPUs, one process each: --gpus 0,1."),
    ) -> None:
        """Train a model: in the foreground here, or detached on the GPU box with --host."""
        if experiment is not None:
            check_experiment_name(experiment)  # before anything is synced, started or deleted
        if _remote_wanted(host, detach, queue, ssh_config):
            from mlconnect.cli.runs import launch_train

            if device:
                sets = [*sets, f"device={device}"]
            launch_train(host=host, ssh_config=ssh_config, config=str(config) if config else None,
                         experiment=experiment, model=model, dataset=dataset, data_path=data_path,
                         overrides=list(sets), queue=queue, resume=resume, force=force, nproc=nproc, gpus=gpus)
            return
        from mlconnect.engine.ddp_launch import exec_torchrun  # here: `serve --bundle` must not import engine

        exec_torchrun(nproc, gpus, config, experiment, model, dataset, data_path, sets, resume, force, device, json_out)
        run_foreground(config, experiment, model, dataset, data_path, sets, resume, force, device, json_out)

    @app.command()
    def quickstart(
        data_path: str = typer.Option(None, "--data-path", envvar="MLCONNECT_DATA_PATH",
                                      help="Where to look for (or put) ml-100k. Default: ./data"),
        model: str = typer.Option("SASRec", "--model", "-m", help="SASRec, GRU4Rec or BERT4Rec."),
        epochs: int = typer.Option(None, "--epochs", help="Cap the number of epochs (default: the config's)."),
        no_download: bool = typer.Option(False, "--no-download", help="Never download; fall back to synthetic data."),
        experiment: str = typer.Option(None, "--experiment", "-e", help="Experiment name."),
    ) -> None:
        """Train SASRec on ml-100k (found, downloaded, or synthetic) and print its metrics."""
        from mlconnect.data.movielens_fetch import resolve_quickstart_dataset

        picked = resolve_quickstart_dataset(Path(data_path or "data"), allow_download=not no_download)
        label = {"found": "ml-100k (found)", "downloaded": "ml-100k (downloaded from GroupLens)",
                 "synthetic": "a synthetic dataset"}[picked.source]
        _out.print(f"dataset: {label} — {picked.reason}")
        sets = [f"epochs={epochs}"] if epochs else []
        config = Path(__file__).resolve().parents[3] / "configs" / "baseline.yaml"
        run_foreground(config if config.is_file() else None, experiment, model, picked.dataset,
                       str(picked.data_path), sets, False, False, None)
