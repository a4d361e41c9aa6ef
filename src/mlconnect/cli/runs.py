"""Run lifecycle commands: ``ps``, ``logs``, ``stop``, ``resume``, ``pull``, ``status``, ``exp create``.

Every command is a thin client of the host agent (:mod:`mlconnect.runs.agent`), reached through
the transport's :class:`~mlconnect.remote.ssh.Target`; with no host the Target is local and the
very same agent code runs here. :func:`launch_train` is what ``mlconnect train`` calls for
``--host`` / ``--detach`` / ``--queue``.

No torch (or any heavy import) at module level: these commands must start fast.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer

from mlconnect.cli.common import HostOpt, JsonOpt, SshConfigOpt, target_from
from mlconnect.errors import ExperimentError, MlconnectError, RemoteError, UsageError

LOGS_WAIT_S = 10.0           # long-poll per `logs -f` round trip
BACKOFF_S = (0.5, 1, 2, 4, 8, 15)


# ------------------------------------------------------------------------------------- transport


def _target(host: str | None, ssh_config: str | None) -> Any:
    return target_from(host, ssh_config)


def call_agent(target: Any, verb: str, *args: str, timeout: float | None = 30) -> Any:
    """Run an agent verb on ``target``; the agent's own refusal becomes one clear error line.

    The agent exits with :data:`~mlconnect.runs.agent.ERROR_EXIT` when it refuses on purpose
    (unknown experiment, already running...): that is an :class:`ExperimentError` here, never
    retried. Anything else (ssh, a missing python) stays the transport's error.
    """
    from mlconnect.runs.agent import ERROR_EXIT

    try:
        return target.agent(verb, *args, timeout=timeout)
    except RemoteError as exc:
        if exc.returncode != ERROR_EXIT:
            raise
        where = "" if target.is_local else f" (on {target.name})"
        raise ExperimentError(f"{exc.message}{where}", exc.hint) from None


def _print_table(rows: list[dict], columns: list[str], as_json: bool, title: str | None = None,
                 raw: Any = None) -> None:
    import json

    if as_json:
        typer.echo(json.dumps(raw if raw is not None else rows, indent=2, default=str))
        return
    from mlconnect.cli.common import print_table

    print_table(rows, columns, as_json=False, title=title)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def ps_table_rows(rows: list[dict]) -> list[dict]:
    """Format agent rows for people (the JSON keeps the raw values)."""
    out = []
    for r in rows:
        epoch = "-" if r.get("epoch") is None else f"{r['epoch']}/{r.get('epochs') or '?'}"
        best = "-" if r.get("best_value") is None else f"{r.get('best_metric')} {r['best_value']:.4f}"
        gpu = "-" if r.get("gpu_util") is None else f"{r['gpu_util']:.0f}%"
        out.append({"name": r["name"], "state": r["state"], "epoch": epoch, "best": best,
                    "gpu": gpu, "age": _age(r.get("age_s"))})
    return out


# ----------------------------------------------------------------------------------- launch_train


def _project_root() -> Path:
    from mlconnect.settings import find_project_root

    return find_project_root() or Path.cwd()


def _relative_config(config: str | None, target: Any) -> str | None:
    """The config as the host will see it: a path inside the synced project."""
    if not config:
        return None
    p = Path(config)
    if not p.is_file():
        raise MlconnectError(f"config file {config} not found", "check the path")
    if getattr(target, "is_local", False):
        return str(p)
    try:
        return p.resolve().relative_to(_project_root().resolve()).as_posix()
    except ValueError as exc:
        raise MlconnectError(f"config {config} is outside the project, so sync cannot carry it to "
                         f"{target.name}", "copy it into the project (e.g. configs/)") from exc


def _default_name(config: str | None, model: str | None, dataset: str | None) -> str:
    from mlconnect.layout import default_experiment_name

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


def sync_project(target: Any) -> None:
    """Bring the host's copy of the project up to date (the transport's sync); nothing for local."""
    if getattr(target, "is_local", False):
        return
    try:
        from mlconnect.remote import sync as sync_mod
    except ImportError:
        sync_mod = None
    fn = None
    for attr in ("sync_project", "sync"):
        fn = fn or getattr(sync_mod, attr, None)
    if fn is None:
        _rsync_project(target)
        return
    fn(target, _project_root()) if _takes_two(fn) else fn(target)


def _rsync_project(target: Any) -> None:
    """Plain rsync of the project, used only when the transport's sync module is not installed.

    Same safety rules: experiments/, .git, data and checkpoints are never sent, nothing on the
    host outside the synced tree is touched, nothing is deleted.
    """
    target.run(["mkdir", "-p", target.remote_root], cwd="~")
    argv = ["rsync", "-rlt", "--exclude=/experiments/", "--exclude=.git/", "--exclude=/data/",
            "--exclude=*.pt", "--exclude=__pycache__/", "--exclude=.venv/", "-e", target.rsync_rsh(),
            f"{_project_root()}/", target.rsync_path(target.remote_root) + "/"]
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    if proc.returncode != 0:
        raise RemoteError(f"syncing the project to {target.name} failed (rsync exit {proc.returncode})",
                          "check the connection with `mlconnect status`, then try again",
                          command=argv, returncode=proc.returncode, stderr=proc.stderr)


def _takes_two(fn: Any) -> bool:
    import inspect

    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.default is inspect.Parameter.empty and p.kind in
                  (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2


def launch_train(*, host: str | None, ssh_config: str | None, config: str | None,
                 experiment: str | None, model: str | None, dataset: str | None,
                 data_path: str | None, overrides: list[str], queue: bool, resume: bool,
                 force: bool) -> dict:
    """Sync, start the run detached on the host (or here), print what to do next, return its status.

    Returns within seconds: the agent answers once the supervisor has recorded the training pid
    (or queued it), long before the first epoch ends.
    """
    target = _target(host, ssh_config)
    rel_config = _relative_config(config, target)
    name = experiment or _default_name(config, model, dataset)
    host_cfg = getattr(target, "host", None)
    if data_path is None and host_cfg is not None and host_cfg.data_path:
        data_path = host_cfg.data_path  # where this host keeps its datasets (mlconnect.toml)
    sync_project(target)
    args = ["--experiment", name]
    for flag, value in (("--config", rel_config), ("--model", model), ("--dataset", dataset),
                        ("--data-path", data_path)):
        if value:
            args += [flag, value]
    for ov in overrides:
        args += ["--set", ov]
    args += [f for f, on in (("--queue", queue), ("--resume", resume), ("--force", force)) if on]
    st = call_agent(target, "start", *args, timeout=60)
    where = "" if target.is_local else f" on {target.name}"
    host_flag = "" if target.is_local or not host else f" --host {shlex.quote(host)}"
    state = st.get("state")
    pid = f" (pid {st['pid']})" if st.get("pid") else ""
    typer.echo(f"{name}: {state}{where}{pid}")
    typer.echo(f"  follow:  mlconnect logs {name} -f{host_flag}")
    typer.echo(f"  list:    mlconnect ps{host_flag}")
    typer.echo(f"  stop:    mlconnect stop {name}{host_flag}")
    return {"experiment": name, **st}


# -------------------------------------------------------------------------------------- follow


def follow_logs(target: Any, name: str, *, follow: bool, offset: int = 0,
                out: Any = None, sleep=time.sleep) -> int:
    """Print training.log from ``offset``; with ``follow`` until the run ends.

    The offset lives here, on the laptop: a dropped connection is retried with backoff from the
    same byte, so every line is printed exactly once. Returns the final offset.
    """
    out = out or sys.stdout
    failures = 0
    seen_ok = False
    while True:
        try:
            res = call_agent(target, "logs-read", "--experiment", name, "--offset", str(offset),
                             "--wait", str(LOGS_WAIT_S if follow else 0), timeout=LOGS_WAIT_S + 30)
        except ExperimentError:
            raise
        except (MlconnectError, subprocess.SubprocessError, OSError, ValueError) as exc:
            # Before the first answer, only connection trouble is worth waiting out: a host
            # without mlconnect will not grow one. After it, anything is (the laptop slept).
            if not follow or (not seen_ok and not _transient(exc)):
                raise
            delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
            failures += 1
            print(f"[mlconnect] connection lost ({_short(exc)}); retrying in {delay}s from byte "
                  f"{offset}", file=sys.stderr, flush=True)
            sleep(delay)
            continue
        seen_ok = True
        if failures:
            print("[mlconnect] reconnected", file=sys.stderr, flush=True)
            failures = 0
        if res.get("truncated"):
            print("[mlconnect] the log was restarted; showing it from the top", file=sys.stderr)
        if res["data"]:
            out.write(res["data"])
            out.flush()
        offset = res["offset"]
        if res.get("done") or (not follow and offset >= res.get("size", 0)):
            return offset


def _transient(exc: BaseException) -> bool:
    """ssh's own failure (255), a timeout (None) or a killed client (negative): try again."""
    rc = getattr(exc, "returncode", 0)
    return rc is None or rc == 255 or (isinstance(rc, int) and rc < 0) or isinstance(exc, OSError)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else type(exc).__name__


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
    remote = target.rsync_path(f"{target.remote_root.rstrip('/')}/experiments/{name}") + "/"
    return ["rsync", "-rlt", "--partial", "--exclude=.*.tmp", "--exclude=.status.lock",
            *PULL_FILTERS[checkpoints], "-e", target.rsync_rsh(), remote, f"{dest}/"]


# ---------------------------------------------------------------------------------------- commands


def register(app: typer.Typer) -> None:
    exp_app = typer.Typer(help="Experiments: create one without running it.", no_args_is_help=True)
    app.add_typer(exp_app, name="exp")

    @app.command("ps")
    def ps_cmd(host: str | None = HostOpt, ssh_config: str | None = SshConfigOpt,
               as_json: bool = JsonOpt) -> None:
        """Runs: name, state, epoch, best metric, GPU utilisation, age."""
        target = _target(host, ssh_config)
        res = call_agent(target, "ps")
        rows = res["experiments"]
        _print_table(ps_table_rows(rows), ["name", "state", "epoch", "best", "gpu", "age"],
                     as_json, title=f"{res['host']}:{res['root']}", raw=rows)

    @app.command("logs")
    def logs_cmd(name: str = typer.Argument(..., help="Experiment name."),
                 follow: bool = typer.Option(False, "-f", "--follow", help="Follow until the run ends."),
                 host: str | None = HostOpt, ssh_config: str | None = SshConfigOpt) -> None:
        """Print a run's training.log; -f follows it across dropped connections."""
        follow_logs(_target(host, ssh_config), name, follow=follow)

    @app.command("stop")
    def stop_cmd(name: str = typer.Argument(..., help="Experiment name."),
                 grace: float = typer.Option(30.0, "--grace", help="Seconds between SIGTERM and SIGKILL."),
                 host: str | None = HostOpt, ssh_config: str | None = SshConfigOpt,
                 as_json: bool = JsonOpt) -> None:
        """Stop a run: SIGTERM (the trainer saves a checkpoint), SIGKILL after --grace."""
        st = call_agent(_target(host, ssh_config), "stop", "--experiment", name, "--grace",
                        str(grace), timeout=grace + 60)
        _echo_state(name, st, as_json)

    @app.command("resume")
    def resume_cmd(name: str = typer.Argument(..., help="Experiment name."),
                   queue: bool = typer.Option(False, "--queue", help="Wait for the GPU (FIFO)."),
                   host: str | None = HostOpt, ssh_config: str | None = SshConfigOpt,
                   as_json: bool = JsonOpt) -> None:
        """Restart a stopped, lost or failed run from its last checkpoint."""
        target = _target(host, ssh_config)
        sync_project(target)
        args = ["--experiment", name] + (["--queue"] if queue else [])
        st = call_agent(target, "resume", *args, timeout=60)
        _echo_state(name, st, as_json)

    @app.command("pull")
    def pull_cmd(name: str = typer.Argument(..., help="Experiment name."),
                 checkpoints: str = typer.Option("best", "--checkpoints", help="best | all | none"),
                 host: str | None = HostOpt, ssh_config: str | None = SshConfigOpt) -> None:
        """Fetch a run's results, logs, config and checkpoints from the host (incremental rsync)."""
        if checkpoints not in PULL_FILTERS:
            raise UsageError(f"--checkpoints {checkpoints!r} is not one of best, all, none",
                             "pick one of them")
        target = _target(host, ssh_config)
        if target.is_local:
            raise UsageError("pull needs a host: this experiment already lives here",
                             "pass --host NAME (or set a default host in mlconnect.toml)")
        call_agent(target, "show", "--experiment", name)  # one clear line for an unknown name
        dest = _project_root() / "experiments" / name
        dest.mkdir(parents=True, exist_ok=True)
        argv = pull_argv(target, name, dest, checkpoints)
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RemoteError(f"rsync from {target.name} failed (exit {proc.returncode})",
                              "check the connection with `mlconnect status`, then pull again "
                              "(it resumes)", command=argv, returncode=proc.returncode,
                              stderr=proc.stderr)
        typer.echo(f"pulled {name} from {target.name} into {dest}")

    @app.command("status")
    def status_cmd(host: str | None = HostOpt, ssh_config: str | None = SshConfigOpt,
                   as_json: bool = JsonOpt) -> None:
        """The host: GPU, disk, load, running runs and services."""
        res = call_agent(_target(host, ssh_config), "host-status")
        if as_json:
            _print_table([], [], True, raw=res)
            return
        _print_status(res)

    @exp_app.command("create")
    def exp_create_cmd(name: str = typer.Argument(..., help="Experiment name."),
                       config: str = typer.Option(..., "--config", help="Config file (YAML)."),
                       force: bool = typer.Option(False, "--force", help="Overwrite its config."),
                       host: str | None = HostOpt, ssh_config: str | None = SshConfigOpt,
                       as_json: bool = JsonOpt) -> None:
        """Create an experiment (its resolved config.yaml) without running it."""
        target = _target(host, ssh_config)
        rel = _relative_config(config, target)
        sync_project(target)
        args = ["--experiment", name, "--config", rel or config] + (["--force"] if force else [])
        res = call_agent(target, "exp-create", *args)
        if as_json:
            _print_table([], [], True, raw=res)
        else:
            typer.echo(f"created {name}: {res['config']}")
            typer.echo(f"  run it: mlconnect train --experiment {name}"
                       + ("" if target.is_local else f" --host {target.name}"))


def _echo_state(name: str, st: dict, as_json: bool) -> None:
    if as_json:
        _print_table([], [], True, raw=st)
        return
    extra = f", exit code {st['exit_code']}" if st.get("exit_code") is not None else ""
    pid = f" (pid {st['pid']})" if st.get("state") == "running" and st.get("pid") else ""
    typer.echo(f"{name}: {st.get('state')}{pid}{extra}")


def _print_status(res: dict) -> None:
    gpu = res["gpu"]
    typer.echo(f"host     {res['host']}  ({res['platform']}, python {res['python']}, "
               f"mlconnect {res['mlconnect']})")
    if gpu["available"]:
        for g in gpu["gpus"]:
            mem = (f"{g['memory_used_mib']:.0f}/{g['memory_total_mib']:.0f} MiB"
                   if g.get("memory_total_mib") is not None else "? MiB")
            util = "?" if g.get("utilization_gpu_pct") is None else f"{g['utilization_gpu_pct']:.0f}%"
            temp = "?" if g.get("temperature_c") is None else f"{g['temperature_c']:.0f}°C"
            typer.echo(f"gpu{g['gpu']}     {g['name']}  {mem}  util {util}  {temp}")
    else:
        typer.echo(f"gpu      no GPU ({gpu['reason']})")
    d = res["disk"]
    typer.echo(f"disk     {d['free_gb']} GB free of {d['total_gb']} GB at {d['path']}")
    load = " ".join(str(x) for x in res["load"]) if res.get("load") else "?"
    typer.echo(f"load     {load}  ({res.get('cpus')} cpus)")
    runs = res.get("runs") or []
    typer.echo(f"runs     {len(runs)} active" + "".join(
        f"\n  {r['name']}: {r['state']} epoch {r.get('epoch') if r.get('epoch') is not None else '-'}"
        for r in runs))
    services = res.get("services") or []
    typer.echo(f"services {len(services)} running" + "".join(
        f"\n  {s.get('name', s.get('kind', '?'))}: pid {s.get('pid')} port {s.get('port', '?')}"
        for s in services))


__all__ = ["call_agent", "follow_logs", "launch_train", "pull_argv", "register"]
