"""``predict --host`` and ``export --host``: the same commands, run on the box.

``predict --host`` runs detached like a training run: this module's host side creates a job folder
``experiments/<job>/`` and hands the command to the runs layer's launcher (``start_run``: supervisor,
status.json, training.log, ``ps`` / ``logs -f`` / ``stop``), with ``--out`` inside the job folder, so
``mlconnect pull <job>`` brings the table back. ``export --host`` is quick: it runs in the foreground
on the box into ``experiments/<name>/exports/<stamp>/`` and the bundle is pulled into ``--out`` with
rsync (into a temp folder first, renamed when complete).

Hooks into other packages, all thin calls: runs.launcher (MARKER, new_run_id, start_run),
runs.store.experiments_dir, remote.ssh.Target (run, python, rsync_rsh, rsync_path, remote_root).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mlconnect.errors import ExperimentError, RemoteError

JOBS = "mlconnect.deploy.jobs"  # this module, as the host entry ``Target.agent`` calls


def job_name(kind: str, experiment: str) -> str:
    return f"{kind}-{Path(experiment).name}-{time.strftime('%Y%m%d-%H%M%S')}"


# -- host side ----------------------------------------------------------------------------------

def start_job(name: str, command: list[str]) -> dict[str, Any]:
    """Start ``mlconnect <command>`` detached in a new job folder; the launcher's status once recorded."""
    from mlconnect.layout import experiment_paths
    from mlconnect.runs import launcher, store

    if not name or name.startswith(".") or "/" in name:
        raise ExperimentError(f"invalid job name {name!r}", "use a plain folder name")
    paths = experiment_paths(name, base=store.experiments_dir("."))
    if paths.root.exists():
        raise ExperimentError(f"{paths.root} already exists", "pick another job name")
    paths.root.mkdir(parents=True)
    run_id = launcher.new_run_id()
    argv = [sys.executable, "-X", f"{launcher.MARKER}{run_id}", "-m", "mlconnect", *command]
    return {"job": name, **launcher.start_run(paths, argv, run_id=run_id)}


def export_here(name: str, out: str, fmt: str, docker: bool) -> dict[str, Any]:
    """``export --host``'s host side: the bundle into ``out`` (in the project), as ``export --json`` says it."""
    from mlconnect.deploy.export import export_bundle
    from mlconnect.layout import check_experiment_name, experiment_paths

    card = export_bundle(experiment_paths(check_experiment_name(name)).root, out, fmt=fmt, docker=docker,
                         log=lambda m: print(m, file=sys.stderr))
    return {"out": out, "verification": card["verification"], "files": card["files"], "mlflow": card.get("mlflow")}


def main(argv: list[str] | None = None) -> int:
    """``python -m mlconnect.deploy.jobs start --json NAME -- <mlconnect args>`` / ``export --json --out DIR
    [--format F] [--docker] NAME``: the agent protocol (one JSON document; a refusal is exit 3)."""
    from mlconnect.runs.agent import reply

    p = argparse.ArgumentParser(prog="python -m mlconnect.deploy.jobs")
    p.add_argument("verb", choices=["start", "export"])
    p.add_argument("--json", action="store_true", help="accepted for symmetry: output is JSON")
    p.add_argument("--out")
    p.add_argument("--format", default="onnx")
    p.add_argument("--docker", action="store_true")
    p.add_argument("name")
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if a.verb == "export":
        return reply(lambda: export_here(a.name, a.out, a.format, a.docker))
    return reply(lambda: start_job(a.name, command))


# -- laptop side --------------------------------------------------------------------------------

def predict_on_host(target: Any, name: str, out: str, args: list[str]) -> dict[str, Any]:
    """Start ``predict NAME`` detached on the box; its output lands in experiments/<job>/<out's name>."""
    job = job_name("predict", name)
    remote_out = f"experiments/{job}/{Path(out).name}"
    st = target.agent("start", job, "--", "predict", name, "--out", remote_out, *args, timeout=60, module=JOBS)
    return {**st, "remote_out": remote_out}


def export_on_host(target: Any, name: str, out: Path, args: list[str]) -> dict[str, Any]:
    """Export on the box (foreground), then rsync the bundle into ``out`` (a temp folder renamed at the end)."""
    if out.exists():
        raise ExperimentError(f"{out} already exists", "choose another --out, or remove that folder first")
    remote_dir = f"experiments/{name}/exports/{time.strftime('%Y%m%d-%H%M%S')}"
    result = target.agent("export", "--out", remote_dir, *args, name, timeout=3600, module=JOBS)  # NAME last
    result.pop("mlconnect_version", None)
    result.pop("mlconnect_build", None)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    out.parent.mkdir(parents=True, exist_ok=True)
    src = target.rsync_path(f"{target.remote_root.rstrip('/')}/{remote_dir}") + "/"
    rsync = ["rsync", "-rlt", "--partial", "-e", target.rsync_rsh(), src, f"{tmp}/"]
    try:
        proc = subprocess.run(rsync, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=3600)
        if proc.returncode != 0:
            raise RemoteError(f"rsync of the bundle from {target.name} failed (exit {proc.returncode})",
                              "check the connection with `mlconnect status`, then export again",
                              command=rsync, returncode=proc.returncode, stderr=proc.stderr)
        from mlconnect.deploy.bundle import Bundle

        Bundle.load(tmp)  # every file arrived intact (sha256s), before it gets the final name
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**result, "out": str(out), "remote_dir": remote_dir}


if __name__ == "__main__":
    sys.exit(main())
