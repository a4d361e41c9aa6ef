"""``predict --host`` and ``export --host``: the same commands, run on the box.

``predict --host`` runs detached like a training run (``--bundle DIR`` is a local bundle: it is
uploaded to ``bundles/`` on the box first): this module's host side creates a job folder
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
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mlconnect.errors import AGENT_REFUSED_EXIT, ExperimentError, MlconnectError, RemoteError


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


def main(argv: list[str] | None = None) -> int:
    """``python -m mlconnect.deploy.jobs start NAME -- <mlconnect args>``: one JSON document on stdout."""
    p = argparse.ArgumentParser(prog="python -m mlconnect.deploy.jobs")
    p.add_argument("verb", choices=["start"])
    p.add_argument("name")
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    try:
        print(json.dumps(start_job(a.name, command), default=str))
    except MlconnectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return AGENT_REFUSED_EXIT
    return 0


# -- laptop side --------------------------------------------------------------------------------

def _on_host(target: Any, argv: list[str], timeout: float | None) -> subprocess.CompletedProcess[str]:
    cp = target.run(argv, timeout=timeout, check=False)
    if cp.returncode != 0:
        line = next((ln for ln in reversed(cp.stderr.splitlines()) if ln.startswith("error: ")), None)
        if line:
            msg, _, hint = line[len("error: "):].partition(" — ")
            raise MlconnectError(f"{msg} (on {target.name})", hint)
        raise RemoteError(f"`{' '.join(argv[:5])} ...` failed on {target.name} (exit {cp.returncode})",
                          "see its output above", command=argv, returncode=cp.returncode, stderr=cp.stderr)
    return cp


def predict_on_host(target: Any, name: str | None, out: str, args: list[str],
                    bundle: Path | None = None) -> dict[str, Any]:
    """Start ``predict NAME`` (or ``--bundle``) detached on the box; its output lands in
    experiments/<job>/<out's name>. A local bundle is uploaded first (upload_bundle)."""
    source = ["--bundle", upload_bundle(target, bundle)] if bundle is not None else [str(name)]
    job = job_name("predict", Path(source[-1]).name)
    remote_out = f"experiments/{job}/{Path(out).name}"
    argv = [target.python, "-m", "mlconnect.deploy.jobs", "start", job, "--",
            "predict", *source, "--out", remote_out, *args]
    st = json.loads(_on_host(target, argv, timeout=60).stdout)
    return {**st, "remote_out": remote_out}


def upload_bundle(target: Any, bundle: Path) -> str:
    """rsync a local bundle (checked here first) to ``bundles/<experiment>-<card digest>/`` on the box; the
    remote path, relative to its project root. The folder is named by the card's sha256, which covers every
    file's, so the same bundle is sent once and another never overwrites it; the job checks it again."""
    from mlconnect.deploy.bundle import CARD, Bundle, sha256_file

    b = Bundle.load(bundle)
    rel = f"bundles/{Path(str(b.card['experiment'])).name}-{sha256_file(b.root / CARD)[:12]}"
    _on_host(target, ["mkdir", "-p", "bundles"], timeout=60)  # no --mkpath on macOS's rsync
    dest = target.rsync_path(f"{target.remote_root.rstrip('/')}/{rel}") + "/"
    rsync = ["rsync", "-rlt", "--delete", "-e", target.rsync_rsh(), f"{b.root}/", dest]
    proc = subprocess.run(rsync, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=3600)
    if proc.returncode != 0:
        raise RemoteError(f"rsync of {bundle} to {target.name} failed (exit {proc.returncode})",
                          "check the connection with `mlconnect status`, then run predict again",
                          command=rsync, returncode=proc.returncode, stderr=proc.stderr)
    return rel


def export_on_host(target: Any, name: str, out: Path, args: list[str]) -> dict[str, Any]:
    """Export on the box (foreground), then rsync the bundle into ``out`` (a temp folder renamed at the end)."""
    if out.exists():
        raise ExperimentError(f"{out} already exists", "choose another --out, or remove that folder first")
    remote_dir = f"experiments/{name}/exports/{time.strftime('%Y%m%d-%H%M%S')}"
    cp = _on_host(target, [target.python, "-m", "mlconnect", "export", name, "--out", remote_dir, "--json", *args],
                  timeout=3600)
    result = json.loads(cp.stdout.strip().splitlines()[-1])
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
