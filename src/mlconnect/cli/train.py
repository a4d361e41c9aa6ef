"""``mlconnect train`` and ``mlconnect quickstart``: the engine from the command line.

With no host, ``train`` runs in the foreground on this machine (progress, then a metrics table).
With ``--host`` (or ``--detach`` / ``--queue``, or a project default host) it hands over to the runs
layer, which syncs the project and starts the same run detached on the box
(described once, as a RunSpec: ``mlconnect.engine.run`` trains it there).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from mlconnect.cli.common import HostOpt, SshConfigOpt
from mlconnect.layout import check_experiment_name

_out = Console(highlight=False)


def _inside_a_rank() -> bool:
    """True in a rank torchrun started for ``train --nproc`` (it runs this command again)."""
    return "LOCAL_RANK" in os.environ


def _remote_wanted(host: str | None, detach: bool, queue: bool, ssh_config: str | None) -> bool:
    """One rule: this machine (no host, ``--host local``...) trains in the foreground unless
    --detach/--queue; any other host gets a detached run."""
    if _inside_a_rank():
        return False  # we *are* the run: never hand over again
    from mlconnect.cli.common import target_from

    return detach or queue or not target_from(host, ssh_config).is_local


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
        from mlconnect.engine.run import train_and_report

        exec_torchrun(nproc, gpus, config, experiment, model, dataset, data_path, sets, resume, force, device, json_out)
        train_and_report(config, experiment, model, dataset, data_path, sets, resume, force, device, json_out)

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
        from mlconnect.engine.run import train_and_report

        picked = resolve_quickstart_dataset(Path(data_path or "data"), allow_download=not no_download)
        label = {"found": "ml-100k (found)", "downloaded": "ml-100k (downloaded from GroupLens)",
                 "synthetic": "a synthetic dataset"}[picked.source]
        _out.print(f"dataset: {label} — {picked.reason}")
        sets = [f"epochs={epochs}"] if epochs else []
        config = Path(__file__).resolve().parents[3] / "configs" / "baseline.yaml"
        train_and_report(config if config.is_file() else None, experiment, model, picked.dataset,
                       str(picked.data_path), sets, False, False, None)
