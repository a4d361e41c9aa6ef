"""The sweep folder ``sweeps/<name>/`` and its Optuna study.

Layout (on the box that holds the study)::

    sweeps/<name>/spec.json      what to run: base config, space, trials, seeds, sampler, pruning
                  journal.log    the Optuna study (JournalStorage, JournalFileBackend)
                  status.json    the sweep as a run (written by mlconnect.runs.launcher)
                  training.log   one line per trial event (the sweep's log)
                  workers/       each worker's own output (the trainer's lines)

Why a journal file and not SQLite: several worker processes (and, with ``--hosts``, the relays of
the other boxes' workers: :mod:`mlconnect.sweeps.relay`) write the same study at once. SQLite
serialises writers with a database lock that file systems on WSL2 and network mounts honour
badly and that makes concurrent writers fail with "database is locked"; Optuna's journal is an
append-only log of operations guarded by a lock file, so a writer that dies mid-trial leaves
every earlier record intact and readers replay it.
It needs no server and no extra package.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlconnect.errors import ExperimentError, MlconnectError
from mlconnect.fileio import locked, read_json

SWEEPS_DIR = "sweeps"
SAMPLERS = ("tpe", "random", "grid")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SweepPaths:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def name(self) -> str:
        return self.root.name

    spec = property(lambda self: self.root / "spec.json")
    journal = property(lambda self: self.root / "journal.log")
    status = property(lambda self: self.root / "status.json")
    log = property(lambda self: self.root / "training.log")
    workers = property(lambda self: self.root / "workers")
    lock = property(lambda self: self.root / ".ask.lock")


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise ExperimentError(f"invalid sweep name {name!r}", "use letters, digits, '-', '_' or '.' (max 64)")
    return name


def sweep_paths(name: str, root: str | os.PathLike[str] = ".") -> SweepPaths:
    return SweepPaths(Path(root) / SWEEPS_DIR / check_name(name))


def find_sweep(name: str, root: str | os.PathLike[str] = ".") -> SweepPaths:
    paths = sweep_paths(name, root)
    if not paths.spec.is_file():
        base = Path(root) / SWEEPS_DIR
        known = sorted(p.name for p in base.iterdir() if (p / "spec.json").is_file()) if base.is_dir() else []
        hint = f"sweeps here: {', '.join(known[:8])}" if known else "no sweeps here yet"
        raise ExperimentError(f"unknown sweep {name!r} in {base.resolve()}", f"{hint} (`mlconnect sweep list`)")
    return paths


def read_spec(paths: SweepPaths) -> dict[str, Any]:
    spec = read_json(paths.spec)
    if not isinstance(spec, dict):
        raise ExperimentError(f"{paths.spec} is missing or not valid JSON", "start the sweep again under a new name")
    return spec


def trial_experiment(sweep: str, number: int, seed: int | None = None) -> str:
    """``<sweep>-t007`` (``-s2021`` appended when the sweep trains each config once per seed)."""
    return f"{sweep}-t{number:03d}" + (f"-s{seed}" if seed is not None else "")


# -------------------------------------------------------------------------------------- optuna


def _optuna() -> Any:
    try:
        import optuna
    except ModuleNotFoundError:
        raise MlconnectError("optuna is not installed for this python",
                             "install the sweep extra: pip install 'mlconnect[sweep]' "
                             "(on a box: `mlconnect bootstrap`)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def storage(paths: SweepPaths, backend: Any = None) -> Any:
    """The study's journal file; or, on another box of ``--hosts``, ``backend`` (the relay to it)."""
    optuna = _optuna()
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(backend or JournalFileBackend(str(paths.journal)))


def sampler(spec: dict[str, Any]) -> Any:
    optuna = _optuna()
    kind, seed = spec.get("sampler", "tpe"), spec.get("sampler_seed")
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        from mlconnect.sweeps.space import parse_space

        grid = {p.name: p.grid() for p in parse_space(spec["space"])}
        return optuna.samplers.GridSampler(grid, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.get("startup_trials", 5))


def pruner(spec: dict[str, Any]) -> Any:
    optuna = _optuna()
    if not spec.get("prune", True):
        return optuna.pruners.NopPruner()
    # Median of earlier trials at the same epoch; the first trials and epochs are never pruned.
    return optuna.pruners.MedianPruner(n_startup_trials=spec.get("prune_startup_trials", 2),
                                       n_warmup_steps=spec.get("prune_warmup_epochs", 2))


def open_study(paths: SweepPaths, spec: dict[str, Any], *, create: bool = False, backend: Any = None) -> Any:
    optuna = _optuna()
    kw = {"study_name": spec["name"], "storage": storage(paths, backend), "sampler": sampler(spec),
          "pruner": pruner(spec)}
    if create:
        return optuna.create_study(direction=spec["direction"], load_if_exists=True, **kw)
    return optuna.load_study(**kw)


@contextmanager
def ask_lock(paths: SweepPaths):
    """Serialises "count the trials, then ask for one" across worker processes: never one too many."""
    with locked(paths.lock):
        yield


def counted(t: Any) -> bool:
    """Trials that use up the budget: all but the interrupted ones whose params were queued again."""
    return t.state.name != "WAITING" and not t.user_attrs.get("requeued")


def requeue_interrupted(study: Any, alive: Any = None) -> list[int]:
    """RUNNING trials whose worker is gone become FAIL, and their params are queued again.

    ``alive(trial) -> bool`` says whether a trial's worker still runs; ``None``: none does (the
    sweep is (re)starting). Returns the numbers of the trials queued again.
    """
    optuna = _optuna()
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if alive is not None and alive(t):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "requeued", True)
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(dict(t.params), user_attrs={"requeued_from": t.number,
                                                        "resume_experiments": t.user_attrs.get("experiments")})
        out.append(t.number)
    return out


# -------------------------------------------------------------------------------------- reading


def trial_rows(study: Any, sweep_active: bool) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = t.state.name.lower()
        if t.user_attrs.get("requeued"):
            state = "requeued"
        elif state == "running" and not sweep_active:
            state = "interrupted"  # resume queues it again
        attrs = t.user_attrs
        rows.append({"number": t.number, "state": state, "params": dict(t.params), "value": t.value,
                     **{k: attrs.get(k) for k in ("pruned_at", "seed_values", "host", "box", "gpu", "error",
                                                  "first_eval_s", "requeued_from")},
                     "experiments": attrs.get("experiments", []),
                     "started": t.datetime_start, "completed": t.datetime_complete})
    return rows


def best_trial(study: Any) -> Any | None:
    optuna = _optuna()
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        return None
    pick = max if study.direction.name == "MAXIMIZE" else min
    return pick(done, key=lambda t: t.value)


def summary(paths: SweepPaths, sweep_active: bool) -> dict[str, Any]:
    spec = read_spec(paths)
    study = open_study(paths, spec)
    rows = trial_rows(study, sweep_active)
    best = best_trial(study)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return {"sweep": spec["name"], "metric": spec["metric"], "direction": spec["direction"],
            "trials_wanted": spec["trials"], "counts": counts, "trials": rows,
            "best": None if best is None else {"number": best.number, "value": best.value,
                                               "params": dict(best.params),
                                               "experiments": best.user_attrs.get("experiments", [])}}


def best_config(paths: SweepPaths) -> dict[str, Any]:
    """The base config with the best trial's params: a config ``mlconnect train`` accepts."""
    spec = read_spec(paths)
    best = best_trial(open_study(paths, spec))
    if best is None:
        raise ExperimentError(f"sweep {spec['name']} has no finished trial yet",
                              f"wait for one (`mlconnect sweep status {spec['name']}`)")
    return {**spec["base"], **best.params}
