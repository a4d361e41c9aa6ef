"""``mlconnect train --nproc N`` / ``--gpus 0,1``: check the request, then become torchrun.

No torch import at module level: the CLI imports this on every ``train``. The ranks themselves use
:mod:`mlconnect.engine.distributed`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any

from mlconnect.errors import UsageError


def visible_gpus() -> int:
    """GPUs this machine has (nvidia-smi, else torch): the check behind ``--gpus``."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0:
                return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            pass
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan(nproc: int | None, gpus: str | None) -> tuple[int, str | None]:
    """(processes, CUDA_VISIBLE_DEVICES) for ``--nproc`` / ``--gpus``; one error line when impossible."""
    if gpus:
        try:
            ids = [int(x) for x in gpus.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--gpus {gpus!r} is not a list of GPU numbers", "e.g. --gpus 0,1") from None
        have = visible_gpus()
        if not ids or len(set(ids)) != len(ids) or max(ids) >= have or min(ids) < 0:
            raise UsageError(f"--gpus {gpus} asks for GPUs this machine does not have ({have} GPU(s): "
                             f"{', '.join(map(str, range(have))) or 'none'})",
                             "pick from those with --gpus, or use --nproc N for CPU processes")
        if nproc and nproc != len(ids):
            raise UsageError(f"--nproc {nproc} does not match --gpus {gpus} ({len(ids)} GPUs)",
                             "give one of them: --gpus implies one process per GPU")
        return len(ids), ",".join(map(str, ids))
    if nproc is not None and nproc < 1:
        raise UsageError(f"--nproc {nproc} must be at least 1", "e.g. --nproc 2")
    return nproc or 1, None


def torchrun_argv(nproc: int, train_args: list[str], rank_entry: tuple[str, ...] = ("-m", "mlconnect", "train")
                  ) -> list[str]:
    """``python [-X marker] -m torch.distributed.run --standalone ... -m mlconnect train ARGS``.

    ``rank_entry`` is what each rank runs before ``train_args`` (a supervised run: the engine's entry
    point, ``-m mlconnect.engine.run``). The interpreter's ``-X`` options are kept: the run id marker
    must stay on the command line of the process the supervisor watches (we exec into it, same pid).
    """
    xopts = [a for k, v in getattr(sys, "_xoptions", {}).items()
             for a in ("-X", k if v is True else f"{k}={v}")]
    # Only rank 0 prints (the others train silently and return the same results): with no --redirects,
    # rank 0 inherits torchrun's stdout/stderr (training.log for a detached run; no relay in between)
    # and the other ranks' go to /dev/null. torchrun still reports a failing rank with its traceback.
    # This module's main is torchrun with one change (torchrun_main): a signal ends it as 128+N.
    return [sys.executable, *xopts, "-m", "mlconnect.engine.ddp_launch", "--standalone",
            f"--nproc-per-node={nproc}", "--local-ranks-filter=0", *rank_entry, *train_args]


def exec_ranks(nproc: int | None, gpus: str | None, rank_argv: list[str]) -> None:
    """Become torchrun over ``nproc``/``gpus`` ranks, each running ``python RANK_ARGV`` (same pid, so a
    supervised run keeps its marker). Returns at once for one process, and inside a rank."""
    wanted = _ranks_wanted(nproc, gpus)
    if wanted:
        _become_torchrun(*wanted, torchrun_argv(wanted[0], rank_argv, rank_entry=()))


def _ranks_wanted(nproc: int | None, gpus: str | None) -> tuple[int, str | None] | None:
    """(ranks, CUDA_VISIBLE_DEVICES) when this process should become torchrun; None: train here."""
    if not (nproc or gpus) or "LOCAL_RANK" in os.environ:
        return None
    n, visible = plan(nproc, gpus)
    return None if n == 1 and not visible else (n, visible)


def _become_torchrun(n: int, visible: str | None, argv: list[str]) -> None:
    if visible:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)


def signal_exit_code(signum: int) -> int:
    """The exit status of a torchrun stopped by signal ``signum``: 128+N, what a single-process trainer
    that caught it returns (143 for SIGTERM), so the supervisor records ``stopped``, not ``failed``."""
    return 128 + int(signum)


def torchrun_main(argv: list[str]) -> int:
    """torchrun (``torch.distributed.run``) with one difference: stopped by a signal, it has sent that
    signal once to each rank and waited for them (each checkpoints, rank 0 writes), then raises
    SignalException, which torchrun turns into exit 1 and a traceback in training.log. Here that
    ends as :func:`signal_exit_code` with one line."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.run import main

    try:
        main(argv)
    except SignalException as exc:
        print(f"[mlconnect] torchrun got {exc.sigval.name}, passed it once to each rank; all have exited",
              file=sys.stderr)
        return signal_exit_code(exc.sigval)
    return 0


def exec_torchrun(nproc: int | None, gpus: str | None, config: Any, experiment: str | None,
                  model: str | None, dataset: str | None, data_path: str | None, sets: list[str],
                  resume: bool, force: bool, device: str | None, json_out: bool) -> None:
    """``mlconnect train --nproc N``: replace this process with torchrun over N ranks (same pid, so a
    supervised run keeps its marker). Returns at once for one process, and inside a rank."""
    wanted = _ranks_wanted(nproc, gpus)
    if not wanted:
        return
    n, visible = wanted
    if experiment is None:  # every rank must write (rank 0) and read the same folder: fix the name now
        from mlconnect.engine.config import load_config, parse_overrides
        from mlconnect.layout import default_experiment_name

        cfg = load_config(config, {**parse_overrides(sets), **{k: v for k, v in (
            ("model", model), ("dataset", dataset), ("data_path", data_path)) if v}})
        experiment = default_experiment_name(cfg["model"], cfg["dataset"])
    args = ["--experiment", experiment]
    for flag, value in (("--config", config and str(config)), ("--model", model), ("--dataset", dataset),
                        ("--data-path", data_path), ("--device", device)):
        if value:
            args += [flag, str(value)]
    for s in sets:
        args += ["--set", s]
    args += [f for f, on in (("--resume", resume), ("--force", force), ("--json", json_out)) if on]
    _become_torchrun(n, visible, torchrun_argv(n, args))


if __name__ == "__main__":  # the supervised process of a `train --nproc N` run (see torchrun_argv)
    sys.exit(torchrun_main(sys.argv[1:]))
