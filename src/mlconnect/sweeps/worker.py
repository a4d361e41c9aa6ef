"""A trial worker: ask the study for a trial, train it as an ordinary experiment, tell the result.

``python -X mlconnect-run=<id> -m mlconnect.sweeps.worker --sweep-dir sweeps/NAME --slot K``. The
sweep's controller (:mod:`mlconnect.sweeps.run`) starts one per ``--parallel`` slot; with
``--hosts`` each box runs its own against the study on the first box. Trials run in this process
(no interpreter start per trial), one after another, until the study has ``trials`` of them.

Each trial writes ``experiments/<sweep>-tNNN/`` like ``mlconnect train`` would, plus a
``status.json`` naming this worker (so ``ps`` reads a trial whose worker died as ``lost``) and
``sweep.json`` (sweep, trial number, params, state, pruned-at epoch).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

from mlconnect.fileio import atomic_write_json, read_json
from mlconnect.layout import experiment_paths
from mlconnect.sweeps import study as st
from mlconnect.sweeps.space import parse_space, suggest


def log_line(paths: st.SweepPaths, text: str) -> None:
    """One line in the sweep's training.log (append: lines from several workers interleave whole)."""
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    with open(paths.log, "a", encoding="utf-8") as f:
        f.write(f"{stamp} {text}\n")


def run_id() -> str | None:
    """The run id the launcher put on our command line (``-X mlconnect-run=<id>``), if any."""
    value = getattr(sys, "_xoptions", {}).get("mlconnect-run")
    return value if isinstance(value, str) else None


def _gpu_index() -> int | None:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return int(visible) if visible.isdigit() else None


def _trial_status(exp: Any, **fields: Any) -> None:
    """The trial's status.json, tied to this worker: ``reconcile`` reads a dead worker as ``lost``."""
    from mlconnect.runs import launcher

    rid = run_id()
    base = {"run_id": rid, "pid": os.getpid(), "pgid": os.getpid(), "supervisor_pid": os.getppid(),
            "queue": False, "exit_code": None, "boot_id": launcher.boot_id(),
            "host": socket.gethostname(), "cwd": os.getcwd(), "command": list(sys.orig_argv), "sweep_trial": True,
            "gpu_index": _gpu_index()}  # the GPU this trial holds (None on a CPU box)
    if rid:  # a worker started by hand (tests, debugging) has no run to tie the trial to
        launcher.update_status(exp, **{**base, **fields})


def train_trial(spec: dict[str, Any], paths: st.SweepPaths, trial: Any, params: dict[str, Any]) -> float:
    """Train one config (once per seed); returns the mean best valid metric. May raise Pruned."""
    import optuna

    from mlconnect.engine.config import load_config
    from mlconnect.engine.experiment import create_experiment
    from mlconnect.engine.trainer import train

    class Pruned(optuna.TrialPruned):
        run_state = "pruned"  # what the trainer writes into progress.json / meta.json

    t_ask = time.perf_counter()
    seeds = spec.get("seeds") or [None]
    # A trial queued again after a stop or a reboot continues the interrupted one's experiments.
    names = trial.user_attrs.get("resume_experiments") or [
        st.trial_experiment(spec["name"], trial.number, s if len(seeds) > 1 else None) for s in seeds]
    trial.set_user_attr("experiments", names)
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("worker_pid", os.getpid())
    trial.set_user_attr("run_id", run_id())
    trial.set_user_attr("gpu", _gpu_index())
    values = []
    for i, (seed, name) in enumerate(zip(seeds, names)):
        cfg = load_config(None, {**spec["base"], **params, **({"seed": seed} if seed is not None else {})})
        exp = experiment_paths(name)
        record = {"sweep": spec["name"], "trial": trial.number, "params": params, "seed": cfg["seed"]}

        def report(epoch: int, value: float, first: bool = i == 0, exp: Any = exp, record: dict = record) -> None:
            if first and "first_eval_s" not in trial.user_attrs:  # ask -> first validation (the benchmark)
                trial.set_user_attr("first_eval_s", round(time.perf_counter() - t_ask, 3))
            if STOP:
                raise KeyboardInterrupt  # SIGTERM arrived before the trainer took the signal over
            # Only the first seed's curve is reported: the pruner compares like with like.
            if not first:
                return
            trial.report(value, epoch)
            if trial.should_prune():
                trial.set_user_attr("pruned_at", epoch)
                atomic_write_json(exp.root / "sweep.json", {**record, "state": "pruned", "pruned_at": epoch})
                raise Pruned(f"pruned at epoch {epoch}")

        finished = read_json(exp.results) if trial.user_attrs.get("resume_experiments") else None
        if finished:  # this seed had ended before the interruption
            values.append(finished["best_valid"][spec["metric"]])
            continue
        resume = exp.checkpoint("last").is_file() and bool(trial.user_attrs.get("resume_experiments"))
        if not resume:
            # config.yaml alone is a "fresh" experiment: the trainer keeps the files written next to it.
            create_experiment(cfg, exp.root, force=True)
        atomic_write_json(exp.root / "sweep.json", {**record, "state": "running"})
        _trial_status(exp, state="running", created=_now(), started=_now(), heartbeat=_now())
        try:
            results = train(cfg, exp.root, resume=resume, on_eval=report)
        except BaseException as exc:
            _trial_status(exp, state=getattr(exc, "run_state", None) or _end_state(exc), ended=_now())
            raise
        _trial_status(exp, state="succeeded", exit_code=0, ended=_now())
        value = results["best_valid"][spec["metric"]]
        values.append(value)
        atomic_write_json(exp.root / "sweep.json", {**record, "state": "complete", "value": value})
    trial.set_user_attr("seed_values", values)
    return sum(values) / len(values)


def _end_state(exc: BaseException) -> str:
    from mlconnect.engine.trainer import TrainingInterrupted

    return "stopped" if isinstance(exc, (TrainingInterrupted, KeyboardInterrupt)) else "failed"


def _now() -> str:
    from mlconnect.runs.launcher import now_iso

    return now_iso()


def work(sweep_dir: str, slot: int, box: str | None = None, relay: Any = None) -> int:
    """Run trials until the study has its number of them; 0 when done, 143 when stopped.

    ``relay`` (:class:`mlconnect.sweeps.relay.RelayBackend`): this worker runs on another box than
    the study, and reaches it, its lock and its log through the ssh channel it was started on.
    """
    import optuna

    from mlconnect.engine.trainer import TrainingInterrupted

    paths = st.SweepPaths(Path(sweep_dir))
    spec = relay.call("spec") if relay else st.read_spec(paths)
    mine = next((b for b in spec.get("boxes") or [] if b["name"] == box), {})
    if mine.get("data_path"):  # mlconnect.toml's data_path for this box
        spec["base"] = {**spec["base"], "data_path": mine["data_path"]}
    log = relay.log if relay else lambda text: log_line(paths, text)
    threads = os.environ.get("MLCONNECT_SWEEP_THREADS")  # this worker's share of the cores
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    space = parse_space(spec["space"])
    study = st.open_study(paths, spec, backend=relay)
    where = f"{box or socket.gethostname()} worker {slot}"
    while not stop_requested(paths, relay):
        with relay.ask_lock() if relay else st.ask_lock(paths):
            if sum(st.counted(t) for t in study.get_trials(deepcopy=False)) >= spec["trials"]:
                return 0
            trial = study.ask()
        if box:
            trial.set_user_attr("box", box)  # the name `pull` and `sweep status` know the box by
            trial.set_user_attr("slot", slot)
        params = suggest(trial, space)
        log(f"trial {trial.number} started on {where}: {params}")
        try:
            value = train_trial(spec, paths, trial, params)
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            log(f"trial {trial.number} pruned at epoch {trial.user_attrs.get('pruned_at')}")
            continue
        except (TrainingInterrupted, KeyboardInterrupt):
            # Left RUNNING on purpose: `sweep resume` queues its params again (as after a reboot).
            log(f"trial {trial.number} interrupted (stop); resume queues it again")
            return 143
        except Exception as exc:  # a config that crashes (NaN, OOM) fails its trial, not the sweep
            if type(exc).__name__ == "RelayLost":
                raise  # the study is out of reach: nothing to tell it
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log(f"trial {trial.number} failed: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            continue
        study.tell(trial, value)
        log(f"trial {trial.number} finished: {spec['metric']} {value:.4f}")
    return 143


STOP = False


def stop_requested(paths: st.SweepPaths, relay: Any = None) -> bool:
    """SIGTERM reached this worker, or the sweep is being stopped. The second matters when the signal
    came after a trial's last step: the trainer notes it, has nothing left to stop, and finishes."""
    if STOP or (relay is not None and relay.stopped.is_set()):
        return True
    if relay is not None or not run_id():
        return False
    status = read_json(paths.status) or {}  # the launcher writes stop_requested before it signals us
    return bool(status.get("stop_requested")) and status.get("run_id") == run_id()


def _on_term(signum: int, frame: Any) -> None:
    # A flag, not an exception: a journal append cut in half would be worse than a late stop.
    global STOP
    STOP = True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlconnect.sweeps.worker")
    p.add_argument("--sweep-dir", required=True)
    p.add_argument("--slot", type=int, default=0)
    p.add_argument("--box", default=None, help="this box's name in --hosts")
    p.add_argument("--relay", action="store_true", help="the study is on the first box, over stdin/stdout")
    a = p.parse_args(argv)
    # Between trials SIGTERM ends the loop (during one, the trainer checkpoints and raises).
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    relay = None
    if a.relay:  # started by the first box's controller over ssh (see mlconnect.sweeps.relay)
        from mlconnect.sweeps import relay as rl

        relay = rl.attach(Path(a.sweep_dir) / "workers" / f"{a.box}-{a.slot}.log")
        _slot_env(relay, a.slot)
    try:
        return work(a.sweep_dir, a.slot, a.box, relay)
    except KeyboardInterrupt:
        return 143


def _slot_env(relay: Any, slot: int) -> None:
    """This box's GPU (or share of its cores) for this worker, before torch is imported."""
    from mlconnect.sweeps.run import box_gpus, slot_env

    spec = relay.call("spec")
    parallel = int(spec.get("parallel", 1))
    env = slot_env(slot, parallel, box_gpus({}))  # --gpus named the first box's GPUs, not ours
    os.environ.update({k: env[k] for k in ("CUDA_VISIBLE_DEVICES", "MLCONNECT_SWEEP_THREADS", "OMP_NUM_THREADS")
                       if k in env})


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Every study write is already on disk (the journal appends and closes per operation); skip
    # the interpreter's teardown of torch and TensorBoard threads, seconds on a busy box.
    os._exit(code)
