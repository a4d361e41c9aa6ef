"""The laptop side of the host agent (:mod:`mlconnect.runs.agent`): launch, follow logs, pull.

A run is described once, as a :class:`~mlconnect.engine.runspec.RunSpec` sent to the agent's
``start``/``resume``; agent failures arrive typed (:class:`~mlconnect.errors.AgentError` and its
subclasses, raised by ``Target.agent``). Every function takes a *target* (``Target``: ``agent()``,
``rsync_path()``, ``rsync_rsh()``, ``is_local``, ``name``, ``remote_root``); with no host it is local and
the very same agent code runs here. The CLI (``cli/runs.py``, ``cli/train.py``) parses, calls one
of these and prints. Nothing here imports torch, nor the transport: these commands start fast,
and the CLI hands in the target and syncs the project itself (``remote.sync``).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlconnect.errors import AgentError, AgentRefused, AgentUnreachable, MlconnectError, RemoteError, UsageError
from mlconnect.layout import EXPERIMENTS_DIR, check_experiment_name, default_experiment_name

if TYPE_CHECKING:  # imported where a spec is made: `serve --bundle` loads this module, never the engine
    from mlconnect.engine.runspec import RunSpec

LOGS_WAIT_S = 10.0           # long-poll per `logs -f` round trip
BACKOFF_S = (0.5, 1, 2, 4, 8, 15)


def host_flag(target: Any) -> str:
    """`` --host NAME`` for the commands we suggest, empty on this machine."""
    return "" if target.is_local else f" --host {shlex.quote(target.name)}"


def run_env(target: Any, name: str, settings: Any) -> dict[str, str]:
    """What the run gets in its environment on the host: where its data is (mlconnect.toml's
    data_path for that host) and how to resume it from the laptop (the trainer prints it when stopped)."""
    env = {"MLCONNECT_RESUME_COMMAND": f"mlconnect resume {name}{host_flag(target)}"}
    data_path = settings.data_path_for(None if target.is_local else target.name)
    if data_path:
        env["MLCONNECT_DATA_PATH"] = str(data_path)
    return env


def relative_config(config: str | None, target: Any, project_root: Path) -> str | None:
    """The config as the host will see it: a path inside the synced project."""
    if not config:
        return None
    p = Path(config)
    if not p.is_file():
        raise MlconnectError(f"config file {config} not found", "check the path")
    if target.is_local:
        return str(p)
    try:
        return p.resolve().relative_to(project_root.resolve()).as_posix()
    except ValueError as exc:
        raise MlconnectError(f"config {config} is outside the project, so sync cannot carry it to "
                             f"{target.name}", "copy it into the project (e.g. configs/)") from exc


def default_name(config: str | None, model: str | None, dataset: str | None) -> str:
    if config and (model is None or dataset is None):
        import yaml
        try:
            doc = yaml.safe_load(Path(config).read_text()) or {}
        except (OSError, yaml.YAMLError):
            doc = {}
        if isinstance(doc, dict):
            model = model or doc.get("model")
            dataset = dataset or doc.get("dataset")
    return default_experiment_name(str(model or "run"), str(dataset or "data"))


def describe_run(target: Any, project_root: Path, settings: Any, *, config: str | None, experiment: str | None,
                 model: str | None = None, dataset: str | None = None, data_path: str | None = None,
                 overrides: list[str] | tuple[str, ...] = (), queue: bool = False, resume: bool = False,
                 force: bool = False, nproc: int | None = None, gpus: str | None = None) -> RunSpec:
    """``train``'s options as the host will run them: the config's path inside the synced project,
    the experiment's name, and the run's environment there (:func:`run_env`)."""
    rel_config = relative_config(config, target, project_root)
    name = experiment or default_name(config, model, dataset)
    from mlconnect.engine.runspec import RunSpec

    return RunSpec(experiment=name, config=rel_config, model=model, dataset=dataset, data_path=data_path,
                   overrides=tuple(overrides), queue=queue, resume=resume, force=force, nproc=nproc,
                   gpus=gpus, env=run_env(target, name, settings))


def launch(target: Any, spec: RunSpec) -> dict:
    """Start the run detached on the host (or here) and return its status: within seconds, as
    soon as the supervisor has recorded the training pid (or queued it). The project is synced.
    The spec travels on the agent's stdin; the host validates it again."""
    return target.agent("start", "--spec", "-", input=spec.to_json(), timeout=60)


def resume(target: Any, name: str, *, queue: bool, env: dict[str, str]) -> dict:
    from mlconnect.engine.runspec import RunSpec

    spec = RunSpec(experiment=check_experiment_name(name), resume=True, queue=queue, env=env)
    return target.agent("resume", "--spec", "-", input=spec.to_json(), timeout=60)


# -------------------------------------------------------------------------------------- follow


def follow_logs(target: Any, name: str, *, follow: bool, offset: int = 0, out: Any = None,
                sleep: Callable[[float], None] = time.sleep) -> int:
    """Print training.log from ``offset``; with ``follow`` until the run ends.

    The offset lives here, on the laptop: a dropped connection is retried with backoff from the
    same byte, so every line is printed exactly once. Returns the final offset.
    """
    out = out or sys.stdout
    failures = 0
    seen_ok = False
    while True:
        try:
            res = target.agent("logs-read", "--experiment", name, "--offset", str(offset),
                               "--wait", str(LOGS_WAIT_S if follow else 0), timeout=LOGS_WAIT_S + 30)
        except AgentRefused:
            raise
        except AgentError as exc:
            # Before the first answer, only a call that did not get through is worth waiting out: a
            # host without mlconnect will not grow one. After it, anything is (the laptop slept) but
            # ssh's refusals (a wrong key, a changed host key), which no wait fixes.
            if not follow or exc.permanent or (not seen_ok and not isinstance(exc, AgentUnreachable)):
                raise
            delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
            failures += 1
            print(f"[mlconnect] lost the connection to {target.name} ({_short(exc)}); retrying in "
                  f"{delay}s from byte {offset}", file=sys.stderr, flush=True)
            sleep(delay)
            continue
        seen_ok = True
        if failures:
            print(f"[mlconnect] reconnected to {target.name}", file=sys.stderr, flush=True)
            failures = 0
        if res.get("truncated"):
            print("[mlconnect] the log was restarted; showing it from the top", file=sys.stderr)
        if res["data"]:
            out.write(res["data"])
            out.flush()
        offset = res["offset"]
        if res.get("done") or (not follow and offset >= res.get("size", 0)):
            if follow and res.get("state") == "lost":  # no supervisor was left to write a last line
                host = "" if target.is_local else f" --host {target.name}"
                print(f"[mlconnect] {name} was lost: its processes ended without a final record (killed, or "
                      f"the host rebooted); `mlconnect resume {name}{host}` continues it from its last "
                      "checkpoint", file=sys.stderr, flush=True)
            return offset


def _short(exc: BaseException, longest: int = 160) -> str:
    """What failed, on one line, cut at a word (never inside the host name at the end)."""
    text = (getattr(exc, "message", None) or str(exc)).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= longest else line[:longest].rsplit(" ", 1)[0] + " …"


# ------------------------------------------------------------------------------------------ pull


PULL_FILTERS = {
    "none": ["--exclude=/checkpoints/"],
    # best.pt and everything serving needs (vocab.json, histories.npz, items.json...): every
    # checkpoint file but the other model checkpoints (last.pt, for resuming on the host).
    "best": ["--include=/checkpoints/best.pt", "--exclude=/checkpoints/*.pt"],
    "all": [],
}


def pull_argv(target: Any, name: str, dest: Path, checkpoints: str) -> list[str]:
    """rsync argv for ``pull`` (flags macOS's rsync 2.6.9 / openrsync also understand).

    Incremental by nature (size + mtime); ``--partial`` keeps a cut transfer of a big checkpoint;
    the temp files of atomic writes (``.x.tmp``) are never copied.
    """
    remote = target.rsync_path(f"{target.remote_root.rstrip('/')}/{EXPERIMENTS_DIR}/{name}") + "/"
    return ["rsync", "-rlt", "--partial", "--exclude=.*.tmp", "--exclude=.status.lock",
            *PULL_FILTERS[checkpoints], "-e", target.rsync_rsh(), remote, f"{dest}/"]


def pull(target: Any, name: str, project_root: Path, checkpoints: str) -> Path:
    """Fetch ``experiments/<name>`` from the host into the project (incremental); its folder."""
    if checkpoints not in PULL_FILTERS:
        raise UsageError(f"--checkpoints {checkpoints!r} is not one of best, all, none", "pick one of them")
    if target.is_local:
        raise UsageError("pull needs a host: this experiment already lives here",
                         "pass --host NAME (or set a default host in mlconnect.toml)")
    check_experiment_name(name)
    detail = target.agent("show", "--experiment", name)  # one clear line for an unknown name
    dest = project_root / EXPERIMENTS_DIR / name
    _check_pull_dest(dest, target, detail.get("status") or {})
    dest.mkdir(parents=True, exist_ok=True)
    argv = pull_argv(target, name, dest, checkpoints)
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RemoteError(f"rsync from {target.name} failed (exit {proc.returncode})",
                          "check the connection with `mlconnect status`, then pull again (it resumes)",
                          command=argv, returncode=proc.returncode, stderr=proc.stderr)
    from mlconnect.fileio import atomic_write_json
    atomic_write_json(dest / PULL_MARK, {"host": target.name, "remote_root": target.remote_root})
    return dest


PULL_MARK = ".pulled-from.json"  # which host a pulled folder mirrors: a later pull may refresh it


def _check_pull_dest(dest: Path, target: Any, remote_status: dict) -> None:
    """Refuse to pull over a folder holding another run (trained here, or pulled from another box):
    rsync would overwrite its checkpoints, results and log with the host's."""
    import socket

    from mlconnect.fileio import read_json_object

    if not dest.is_dir() or not any(dest.iterdir()):
        return
    mark = read_json_object(dest / PULL_MARK) or {}
    if mark:
        if mark.get("host") == target.name:
            return
        whose = f"pulled from {mark.get('host')}"
    else:
        # Pulled before pulls were marked: its status.json names the host's machine, not this one.
        here = (read_json_object(dest / "status.json") or {}).get("host")
        if here and here == remote_status.get("host") and here != socket.gethostname():
            return
        whose = "trained here"
    raise MlconnectError(f"experiments/{dest.name} here holds another run ({whose}); pulling {dest.name} "
                         f"from {target.name} would overwrite it",
                         f"move it away first (`mv experiments/{dest.name} experiments/{dest.name}_here`), "
                         "then pull again")


def pulled_while_active(dest: Path) -> str | None:
    """The state a pulled copy was taken in when the run was still going (queued/running), else None:
    the copy is a snapshot, and the user should know to pull again."""
    from mlconnect.expstate import ACTIVE
    from mlconnect.fileio import read_json_object

    state = (read_json_object(dest / "status.json") or {}).get("state")
    return state if state in ACTIVE else None


# ---------------------------------------------------------------------------------------- views


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _gpu_cell(r: dict) -> str:
    """Which GPU a queued run holds (``#1``), its utilisation, and a DDP run's world size (``x2``)."""
    parts = [] if r.get("gpu_index") is None else [f"#{r['gpu_index']}"]
    parts += [] if r.get("gpu_util") is None else [f"{r['gpu_util']:.0f}%"]
    parts += [f"x{r['world_size']}"] if (r.get("world_size") or 1) > 1 else []
    return " ".join(parts) or "-"


def ps_table_rows(rows: list[dict]) -> list[dict]:
    """Agent rows for people (the JSON keeps the raw values)."""
    out = []
    for r in rows:
        epoch = "-" if r.get("epoch") is None else f"{r['epoch']}/{r.get('epochs') or '?'}"
        best = "-" if r.get("best_value") is None else f"{r.get('best_metric')} {r['best_value']:.4f}"
        gpu = _gpu_cell(r)
        out.append({"name": r["name"], "state": r["state"], "epoch": epoch, "best": best,
                    "gpu": gpu, "age": _age(r.get("age_s"))})
    return out


def status_lines(res: dict) -> list[str]:
    """``mlconnect status`` for people: host, GPUs, disk, load, active runs, services."""
    lines = [f"host     {res['host']}  ({res['platform']}, python {res['python']}, "
             f"mlconnect {res['mlconnect']})"]
    gpu = res["gpu"]
    for g in gpu["gpus"] if gpu["available"] else []:
        mem = (f"{g['memory_used_mib']:.0f}/{g['memory_total_mib']:.0f} MiB"
               if g.get("memory_total_mib") is not None else "? MiB")
        util = "?" if g.get("utilization_gpu_pct") is None else f"{g['utilization_gpu_pct']:.0f}%"
        temp = "?" if g.get("temperature_c") is None else f"{g['temperature_c']:.0f}°C"
        lines.append(f"gpu{g['gpu']}     {g['name']}  {mem}  util {util}  {temp}")
    if not gpu["available"]:
        lines.append(f"gpu      no GPU ({gpu['reason']})")
    d = res["disk"]
    lines.append(f"disk     {d['free_gb']} GB free of {d['total_gb']} GB at {d['path']}")
    load = " ".join(str(x) for x in res["load"]) if res.get("load") else "?"
    lines.append(f"load     {load}  ({res.get('cpus')} cpus)")
    runs = res.get("runs") or []
    lines.append(f"runs     {len(runs)} active")
    lines += [f"  {r['name']}: {r['state']} epoch {r.get('epoch') if r.get('epoch') is not None else '-'}"
              for r in runs]
    services = res.get("services") or []
    lines.append(f"services {len(services)} running")
    lines += [f"  {s.get('name', s.get('kind', '?'))}: pid {s.get('pid')} port {s.get('port', '?')}"
              for s in services]
    return lines


def state_line(name: str, st: dict) -> str:
    """``exp_1: running (pid 123)`` / ``exp_1: stopped, exit code 143``."""
    extra = f", exit code {st['exit_code']}" if st.get("exit_code") is not None else ""
    pid = f" (pid {st['pid']})" if st.get("state") == "running" and st.get("pid") else ""
    return f"{name}: {st.get('state')}{pid}{extra}"
