"""The engine's entry point for a run the supervisor starts: ``python -m mlconnect.engine.run SPEC``.

``SPEC`` is the run's :class:`~mlconnect.engine.runspec.RunSpec` file (``<experiment>/run_spec.json``,
written by the host agent). With ``nproc``/``gpus`` the process becomes torchrun over that many
ranks, each running this same module on the same file. ``mlconnect train`` in the foreground
prints through :func:`train_and_report` too, so a detached run's training.log reads the same.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from mlconnect.engine.runspec import RunSpec
from mlconnect.errors import MlconnectError, UsageError
from mlconnect.layout import check_experiment_name, default_experiment_name, experiment_paths


def print_results(results: dict[str, Any]) -> None:
    """The metrics table people read at the end of a run."""
    from rich.table import Table

    out = _console()
    table = Table(title=f"{results['model']} on {results['dataset']} — {results['experiment']}")
    table.add_column("metric")
    table.add_column("valid", justify="right")
    table.add_column("test", justify="right")
    for key, test_value in results["test"].items():
        table.add_row(key, f"{results['best_valid'].get(key, float('nan')):.4f}", f"{test_value:.4f}")
    out.print(table)
    out.print(f"best epoch {results['best_epoch']} of {results['epochs']}, "
              f"{results['wall_time_s']:.1f}s training ({results['seconds_per_epoch']:.2f}s/epoch, "
              f"{results['throughput_tokens_per_s']:,.0f} tokens/s) on {results['device']}")


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def train_and_report(config: Path | str | None, experiment: str | None, model: str | None, dataset: str | None,
                     data_path: str | None, sets: list[str], resume: bool, force: bool, device: str | None,
                     json_out: bool = False) -> dict[str, Any]:
    """Train on this machine and print the results (behind ``mlconnect train`` and this entry point)."""
    from mlconnect.engine.experiment import run_config
    from mlconnect.engine.trainer import train as train_engine

    if experiment is not None:
        check_experiment_name(experiment)
    if resume and not experiment:
        raise UsageError("--resume needs --experiment NAME", "name the experiment to continue")
    cfg = run_config(Path(config) if config else None, experiment, model=model, dataset=dataset,
                     data_path=data_path, sets=sets, device=device)
    name = experiment or default_experiment_name(cfg["model"], cfg["dataset"])
    if json_out:
        # stdout carries the JSON alone (scripts parse it); the progress lines go to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            results = train_engine(cfg, experiment_paths(name).root, resume=resume, force=force)
        print(json.dumps(results, indent=2), flush=True)
        return results
    results = train_engine(cfg, experiment_paths(name).root, resume=resume, force=force)
    print_results(results)
    _console().print(f"TensorBoard: mlconnect tensorboard {name}   (logs in "
                     f"{experiment_paths(name).tensorboard})")
    return results


def run_spec(spec_file: str) -> None:
    """Train what the spec says; with DDP, first become torchrun over ranks that run this again."""
    from mlconnect.engine.ddp_launch import exec_ranks

    try:
        spec = RunSpec.from_json(Path(spec_file).read_bytes())
    except OSError as exc:
        raise MlconnectError(f"cannot read the run spec {spec_file}: {exc.strerror}",
                             "start the run again with `mlconnect train` or `mlconnect resume`") from None
    exec_ranks(spec.nproc, spec.gpus, ["-m", "mlconnect.engine.run", str(Path(spec_file).resolve())])
    train_and_report(spec.config, spec.experiment, spec.model, spec.dataset, spec.data_path,
                     list(spec.overrides), spec.resume, spec.force, None)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mlconnect.engine.run RUN_SPEC.json", file=sys.stderr)
        return 2
    try:
        run_spec(args[0])
    except MlconnectError as exc:  # one line, as `mlconnect train` prints it
        if os.environ.get("MLCONNECT_DEBUG") == "1":
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
