"""The host-side entry the laptop calls: ``python -m mlconnect.runs.agent <verb> --json ...``.

Runs in the project root on the host (``remote_root``), or in the local project when there is
no host: the same code either way. Prints exactly one JSON document on stdout. On a deliberate
error it prints ``{"error": {"type", "message", "hint"}}``, the one-line message on stderr, and
exits 1, so the laptop can show the host's own words. argparse, not typer, and no torch import:
every ``ps`` or ``logs -f`` poll pays this module's start-up time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlconnect import __version__, baked_build_id
from mlconnect.engine.runspec import RunSpec
from mlconnect.errors import AGENT_REFUSED_EXIT, ExperimentError, MlconnectError
from mlconnect.fileio import atomic_write_bytes, read_json_object
from mlconnect.layout import check_experiment_name, experiment_paths, remove_experiment
from mlconnect.runs import launcher, store
from mlconnect.runs.gpu import gpu_summary

LOG_POLL_S = 0.2


def _paths_for_new(name: str):
    return experiment_paths(check_experiment_name(name), base=store.experiments_dir("."))


# ------------------------------------------------------------------------------------------ verbs


def _read_spec(a: argparse.Namespace, **changes: object) -> RunSpec:
    """The run as the laptop described it (``--spec -``: on stdin), checked here again."""
    text = sys.stdin.read() if a.spec == "-" else a.spec
    spec = RunSpec.from_json(text)
    return replace(spec, **changes) if changes else spec


def cmd_start(a: argparse.Namespace) -> dict:
    spec = _read_spec(a)
    paths = _paths_for_new(spec.experiment)
    if spec.config and not Path(spec.config).is_file():
        raise ExperimentError(f"config file {spec.config} not found on {socket.gethostname()} "
                              f"in {Path.cwd()}", "sync the project first (`mlconnect sync`), "
                              "or give a path inside the project")
    if launcher.is_active(paths):  # checked again by start_run; before --force deletes anything
        st = launcher.read_status(paths) or {}
        raise ExperimentError(f"experiment {spec.experiment} is already {st.get('state')} "
                              f"(pid {st.get('pid')})", f"`mlconnect stop {spec.experiment}` first")
    if not spec.resume:
        started_before = paths.status.exists() or paths.progress.exists() or paths.checkpoints.exists()
        if started_before and not spec.force:
            raise ExperimentError(f"experiment {spec.experiment} already has a run",
                                  f"`mlconnect resume {spec.experiment}` continues it; --force starts it "
                                  "over; or pick another --experiment")
        if spec.force and paths.root.exists():
            # Done here, not by the trainer's --force: the supervisor writes status.json and
            # training.log in this folder before the trainer starts, and must keep them.
            remove_experiment(paths.root)
        if not spec.config and paths.config.is_file():
            spec = replace(spec, config=str(paths.config))  # made by `exp create`: train what was created
        paths.root.mkdir(parents=True, exist_ok=True)
        if not paths.config.is_file():
            # The trainer accepts a folder holding only config.yaml as a new ("fresh") experiment;
            # it rewrites the file with the fully resolved config when it starts.
            atomic_write_bytes(paths.config, Path(spec.config).read_bytes() if spec.config else b"{}\n")
    return _with_warnings(launcher.start_training(paths, spec))


def _with_warnings(st: dict) -> dict:
    from mlconnect.wsl import run_warnings  # a WSL distro that idles out kills the run (#14)

    return {**st, "warnings": run_warnings()}


def cmd_resume(a: argparse.Namespace) -> dict:
    spec = _read_spec(a, resume=True)
    paths = store.find_experiment(spec.experiment)
    st = launcher.reconcile(paths) or {}
    state = st.get("state") or store.experiment_row(paths)["state"]
    if state in launcher.ACTIVE:
        raise ExperimentError(f"experiment {spec.experiment} is already {state}",
                              f"`mlconnect logs {spec.experiment} -f` follows it")
    if state not in launcher.RESUMABLE:
        raise ExperimentError(f"experiment {spec.experiment} cannot be resumed (state: {state})",
                              "only stopped, lost or failed runs resume; "
                              f"`mlconnect train --experiment {spec.experiment} --force` starts it over")
    if not paths.checkpoint("last").exists():
        raise ExperimentError(f"experiment {spec.experiment} has no checkpoint to resume from "
                              f"({paths.checkpoint('last')})",
                              f"start it over: `mlconnect train --experiment {spec.experiment} --force`")
    world = (read_json_object(paths.progress) or {}).get("world_size")  # DDP: resume with as many ranks
    return _with_warnings(launcher.start_training(paths, replace(spec, nproc=world if world and world > 1 else None)))


def cmd_stop(a: argparse.Namespace) -> dict:
    return launcher.stop_run(store.find_experiment(a.experiment), grace_s=a.grace)


def cmd_ps(a: argparse.Namespace) -> dict:
    return {"host": socket.gethostname(), "root": str(Path.cwd()),
            "experiments": store.list_experiments(".")}


def cmd_show(a: argparse.Namespace) -> dict:
    return store.experiment_detail(store.find_experiment(a.experiment))


def logs_read(paths, offset: int, max_bytes: int = 1 << 20, wait_s: float = 0.0) -> dict:
    """Bytes of training.log from ``offset``, whole lines only while the run is live.

    The caller keeps the offset: after a dropped connection it asks again from the same byte,
    so nothing is lost or repeated. ``wait_s`` long-polls for new output (one ssh round trip per
    burst of lines instead of one per poll).
    """
    deadline = time.monotonic() + wait_s
    while True:
        state = (launcher.reconcile(paths) or {}).get("state")
        live = state in launcher.ACTIVE
        try:
            size = paths.log.stat().st_size
        except FileNotFoundError:
            size = 0
        truncated = size < offset
        if truncated:  # the log was replaced (run started over with --force): start again at 0
            offset = 0
        chunk = b""
        if size > offset:
            with open(paths.log, "rb") as f:
                f.seek(offset)
                chunk = f.read(min(max_bytes, size - offset))
            if live or len(chunk) == max_bytes:
                # Only complete lines: a half-written line (or utf-8 char) waits for the next call.
                cut = chunk.rfind(b"\n")
                chunk = chunk[:cut + 1] if cut >= 0 else (chunk if len(chunk) == max_bytes else b"")
        new_offset = offset + len(chunk)
        if chunk or truncated or not live or time.monotonic() >= deadline:
            return {"data": chunk.decode("utf-8", "replace"), "offset": new_offset, "size": size,
                    "state": state, "truncated": truncated,
                    "done": not live and new_offset >= size}
        time.sleep(LOG_POLL_S)


def cmd_snapshot(a: argparse.Namespace) -> dict:
    """What ``monitor --host`` draws: every small file of the folder (a missing one is not an error)."""
    from mlconnect.expstate import snapshot

    return snapshot(str(store.experiments_dir(".") / check_experiment_name(a.experiment)), a.log_lines)


def cmd_logs_read(a: argparse.Namespace) -> dict:
    return logs_read(store.find_experiment(a.experiment), a.offset, a.max_bytes, a.wait)


def _disk(path: str) -> dict:
    du = shutil.disk_usage(path)
    return {"path": str(Path(path).resolve()), "free_gb": round(du.free / 2**30, 1),
            "total_gb": round(du.total / 2**30, 1)}


def _memory() -> dict | None:
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    except (OSError, ValueError):
        return None
    kb = {k: int(v.split()[0]) for k, v in info.items() if k in ("MemTotal", "MemAvailable")}
    return {"total_gb": round(kb.get("MemTotal", 0) / 2**20, 1),
            "available_gb": round(kb.get("MemAvailable", 0) / 2**20, 1)}


def _services() -> list[dict]:
    """TensorBoard / Jupyter started by `mlconnect tensorboard` / `jupyter` and still ours."""
    from mlconnect.runs import services

    return services.list_services(Path.cwd())


def cmd_host_status(a: argparse.Namespace) -> dict:
    rows = store.list_experiments(".")
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"host": socket.gethostname(), "platform": platform.platform(terse=True),
            "python": sys.version.split()[0], "mlconnect": __version__, "mlconnect_version": __version__,
            "root": str(Path.cwd()),
            "gpu": gpu_summary(), "disk": _disk("."), "load": load, "cpus": os.cpu_count(),
            "memory": _memory(),
            "runs": [r for r in rows if r["state"] in launcher.ACTIVE],
            "services": _services()}


def cmd_exp_create(a: argparse.Namespace) -> dict:
    paths = _paths_for_new(a.experiment)
    if paths.root.exists() and any(paths.root.iterdir()) and not a.force:
        raise ExperimentError(f"experiment {a.experiment} already exists ({paths.root})",
                              "pick another name, or pass --force to overwrite its config")
    if launcher.is_active(paths):
        raise ExperimentError(f"experiment {a.experiment} is running", "stop it first")
    cfg_path = Path(a.config)
    if not cfg_path.is_file():
        raise ExperimentError(f"config file {a.config} not found in {Path.cwd()}",
                              "sync the project first, or give a path inside the project")
    from mlconnect.engine.config import load_config  # validated and resolved by the engine
    from mlconnect.engine.experiment import create_experiment

    create_experiment(load_config(str(cfg_path), None), paths.root, force=a.force)
    return {"experiment": a.experiment, "path": str(paths.root.resolve()),
            "config": str(paths.config.resolve()), "created_by": "engine"}


def cmd_service_start(a: argparse.Namespace) -> dict:
    from mlconnect.runs import services

    return services.start_service(Path.cwd(), a.service, experiment=a.experiment, logdir=a.logdir,
                                  port=a.port)


def cmd_service_stop(a: argparse.Namespace) -> dict:
    from mlconnect.runs import services

    return services.stop_service(Path.cwd(), a.service)


def cmd_version(a: argparse.Namespace) -> dict:
    return {"mlconnect_version": __version__, "python": sys.version.split()[0], "executable": sys.executable,
            "host": socket.gethostname(), "root": str(Path.cwd())}


# ------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlconnect.runs.agent")
    sub = p.add_subparsers(dest="verb", required=True)

    def verb(name: str, fn, exp: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name)
        sp.add_argument("--json", action="store_true", help="accepted for symmetry: output is JSON")
        if exp:
            sp.add_argument("--experiment", required=True)
        sp.set_defaults(fn=fn)
        return sp

    for name, fn in (("start", cmd_start), ("resume", cmd_resume)):
        verb(name, fn, exp=False).add_argument(
            "--spec", required=True, help="the run as JSON (mlconnect.engine.runspec.RunSpec); - reads stdin")
    verb("stop", cmd_stop).add_argument("--grace", type=float, default=30.0)
    verb("ps", cmd_ps, exp=False)
    verb("show", cmd_show)
    lr = verb("logs-read", cmd_logs_read)
    lr.add_argument("--offset", type=int, default=0)
    lr.add_argument("--max-bytes", type=int, default=1 << 20)
    lr.add_argument("--wait", type=float, default=0.0)
    verb("snapshot", cmd_snapshot).add_argument("--log-lines", type=int, default=12)
    verb("host-status", cmd_host_status, exp=False)
    ec = verb("exp-create", cmd_exp_create)
    ec.add_argument("--config", required=True)
    ec.add_argument("--force", action="store_true")
    verb("version", cmd_version, exp=False)
    ss = verb("service-start", cmd_service_start, exp=False)
    ss.add_argument("--service", required=True, choices=("tensorboard", "jupyter"))
    ss.add_argument("--experiment")
    ss.add_argument("--logdir")
    ss.add_argument("--port", type=int, help="first port to try on this machine")
    verb("service-stop", cmd_service_stop, exp=False).add_argument(
        "--service", required=True, choices=("tensorboard", "jupyter"))
    return p


def reply(produce: Callable[[], Any]) -> int:
    """The agent protocol, for every host entry (this agent, the sweep agent, deploy's jobs): one JSON
    document on stdout; a deliberate error is ``{"error", "hint", "type"}``, its line on stderr and
    exit 3, which ``Target.agent`` raises as ``AgentRefused`` (apart from a connection or installation
    failure). Every answer names the code that produced it, so the laptop reports version skew."""
    try:
        out, code = produce(), 0
    except MlconnectError as exc:
        out = {"error": exc.message, "hint": exc.hint, "type": type(exc).__name__}
        print(f"error: {exc}", file=sys.stderr)
        code = AGENT_REFUSED_EXIT
    if isinstance(out, dict):
        out.setdefault("mlconnect_version", __version__)
        build = baked_build_id()  # only in wheels `mlconnect bootstrap` built: equal versions, other code
        if build:
            out.setdefault("mlconnect_build", build)
    sys.stdout.write(json.dumps(out, default=str) + "\n")
    sys.stdout.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return reply(lambda: args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
